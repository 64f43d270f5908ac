"""Several compiled kernels launched by one C call, their arguments packed once: the replayed launch plan of the eager
decode op (:class:`mustafar.kernels.decode._Plan`) runs its decoder and merge through it.

Triton's C launcher parses every argument from a Python tuple on every call (~30 per decoder launch), releases and
retakes the GIL and is called once per kernel; on the H100's host the two launches of a replayed call cost ~17 µs,
more than the rest of the call (results/kernels/round30_h100/host2/). A :class:`LaunchSequence` packs each kernel's
parameters once, as Triton's launcher would pass them (one 8-byte slot per parameter, the global and profile
scratch pointers last), and per call only writes the few addresses that change (q, the windows, the output) before
calling ``cuLaunchKernelEx`` for each kernel in turn (on dynamic stores the length and each split's share change
too).

The packing follows the installed Triton's launcher (``triton.backends.nvidia.driver.make_launcher``); before a
sequence is used on the GPU, the driver's own view of every kernel's parameters (``cuFuncGetParamInfo``: count and
sizes) is checked against it, so a Triton that passes other parameters makes :func:`build` refuse rather than
launch wrong ones. The C module is compiled on first use with Triton's build helper (the C compiler Triton needs for
its own launchers); where it cannot be built or checked, callers keep Triton's launcher.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from types import ModuleType

_LOG = logging.getLogger(__name__)

_SOURCE = r"""
#include "cuda.h"
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef CUresult (*launch_ex_t)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*ctx_get_t)(CUcontext *);
typedef CUresult (*param_info_t)(CUfunction, size_t, size_t *, size_t *);
typedef CUresult (*error_string_t)(CUresult, const char **);

static launch_ex_t launch_ex = NULL;
static ctx_get_t ctx_get = NULL;
static param_info_t param_info = NULL;
static error_string_t error_string = NULL;

static int load_driver(void) {
  if (launch_ex) return 1;
  void *lib = dlopen("libcuda.so.1", RTLD_LAZY);
  if (!lib) {
    PyErr_SetString(PyExc_RuntimeError, "launch_seq: libcuda.so.1 cannot be opened");
    return 0;
  }
  ctx_get = (ctx_get_t)dlsym(lib, "cuCtxGetCurrent");
  param_info = (param_info_t)dlsym(lib, "cuFuncGetParamInfo");
  error_string = (error_string_t)dlsym(lib, "cuGetErrorString");
  launch_ex_t launch = (launch_ex_t)dlsym(lib, "cuLaunchKernelEx");
  if (!ctx_get || !param_info || !error_string || !launch) {
    PyErr_SetString(PyExc_RuntimeError, "launch_seq: the driver lacks cuLaunchKernelEx or cuFuncGetParamInfo");
    return 0;
  }
  launch_ex = launch;
  return 1;
}

typedef struct {
  CUfunction function;
  unsigned int grid[3], block, smem;
  int pdl;
  Py_ssize_t nparams, npatch;
  uint64_t *slots; /* one 8-byte slot per kernel parameter, the value in its low bytes */
  void **params;
  Py_ssize_t *patch_slot, *patch_input;
} Launch;

typedef struct {
  Py_ssize_t n, ninputs;
  CUcontext ctx; /* the context the kernels were loaded in; NULL: not checked against the driver */
  Launch *launches;
} Seq;

static void seq_free(Seq *seq) {
  if (!seq) return;
  for (Py_ssize_t i = 0; i < seq->n; i++) {
    Launch *l = &seq->launches[i];
    free(l->slots);
    free(l->params);
    free(l->patch_slot);
    free(l->patch_input);
  }
  free(seq->launches);
  free(seq);
}

static void capsule_free(PyObject *capsule) { seq_free((Seq *)PyCapsule_GetPointer(capsule, "launch_seq")); }

/* driver's parameter sizes against the packed ones: every slot's size, and no parameter past the last */
static int check_params(Launch *l, PyObject *sizes) {
  if (!PyTuple_Check(sizes) || PyTuple_GET_SIZE(sizes) != l->nparams) {
    PyErr_SetString(PyExc_ValueError, "launch_seq: one size per parameter slot");
    return 0;
  }
  for (Py_ssize_t i = 0; i <= l->nparams; i++) {
    size_t offset = 0, size = 0;
    CUresult rc = param_info(l->function, (size_t)i, &offset, &size);
    if (i == l->nparams) {
      if (rc == CUDA_SUCCESS) {
        PyErr_Format(PyExc_ValueError, "launch_seq: the kernel takes more than the %zd parameters packed", l->nparams);
        return 0;
      }
      break;
    }
    long want = PyLong_AsLong(PyTuple_GET_ITEM(sizes, i));
    if (rc != CUDA_SUCCESS || (long)size != want) {
      PyErr_Format(PyExc_ValueError, "launch_seq: parameter %zd is %zu bytes to the driver (rc %d), %ld packed", i,
                   size, (int)rc, want);
      return 0;
    }
  }
  return 1;
}

/* new(launches, ninputs, check): launches is a tuple of
   (function, gx, gy, gz, block, smem, pdl, slots: bytes, sizes: tuple, patches: tuple of (slot, input)) */
static PyObject *seq_new(PyObject *self, PyObject *args) {
  PyObject *launches;
  Py_ssize_t ninputs;
  int check;
  if (!PyArg_ParseTuple(args, "O!np", &PyTuple_Type, &launches, &ninputs, &check)) return NULL;
  if (check && !load_driver()) return NULL;
  Seq *seq = calloc(1, sizeof(Seq));
  if (!seq) return PyErr_NoMemory();
  seq->n = PyTuple_GET_SIZE(launches);
  seq->ninputs = ninputs;
  seq->launches = calloc(seq->n ? seq->n : 1, sizeof(Launch));
  if (!seq->launches) {
    free(seq);
    return PyErr_NoMemory();
  }
  for (Py_ssize_t i = 0; i < seq->n; i++) {
    Launch *l = &seq->launches[i];
    unsigned long long function;
    const char *blob;
    Py_ssize_t nbytes;
    PyObject *sizes, *patches;
    if (!PyArg_ParseTuple(PyTuple_GET_ITEM(launches, i), "KIIIIIiy#O!O!", &function, &l->grid[0], &l->grid[1],
                          &l->grid[2], &l->block, &l->smem, &l->pdl, &blob, &nbytes, &PyTuple_Type, &sizes,
                          &PyTuple_Type, &patches))
      goto fail;
    if (nbytes % 8) {
      PyErr_SetString(PyExc_ValueError, "launch_seq: the slots must be whole 8-byte words");
      goto fail;
    }
    l->function = (CUfunction)(uintptr_t)function;
    l->nparams = nbytes / 8;
    l->npatch = PyTuple_GET_SIZE(patches);
    l->slots = malloc(nbytes ? nbytes : 8);
    l->params = malloc(sizeof(void *) * (l->nparams ? l->nparams : 1));
    l->patch_slot = malloc(sizeof(Py_ssize_t) * (l->npatch ? l->npatch : 1));
    l->patch_input = malloc(sizeof(Py_ssize_t) * (l->npatch ? l->npatch : 1));
    if (!l->slots || !l->params || !l->patch_slot || !l->patch_input) {
      PyErr_NoMemory();
      goto fail;
    }
    memcpy(l->slots, blob, nbytes);
    for (Py_ssize_t p = 0; p < l->nparams; p++) l->params[p] = &l->slots[p];
    for (Py_ssize_t p = 0; p < l->npatch; p++) {
      if (!PyArg_ParseTuple(PyTuple_GET_ITEM(patches, p), "nn", &l->patch_slot[p], &l->patch_input[p])) goto fail;
      if (l->patch_slot[p] < 0 || l->patch_slot[p] >= l->nparams || l->patch_input[p] < 0 ||
          l->patch_input[p] >= ninputs) {
        PyErr_SetString(PyExc_ValueError, "launch_seq: a patch names a slot or an input that does not exist");
        goto fail;
      }
    }
    if (check && !check_params(l, sizes)) goto fail;
  }
  if (check) {
    CUresult rc = ctx_get(&seq->ctx);
    if (rc != CUDA_SUCCESS || !seq->ctx) {
      PyErr_SetString(PyExc_RuntimeError, "launch_seq: no current CUDA context");
      goto fail;
    }
  }
  PyObject *capsule = PyCapsule_New(seq, "launch_seq", capsule_free);
  if (!capsule) goto fail;
  return capsule;
fail:
  seq_free(seq);
  return NULL;
}

/* the inputs (addresses) written into their slots; NULL with an error set on bad arguments */
static Seq *prepare(PyObject *const *args, Py_ssize_t nargs, uint64_t *stream) {
  if (nargs < 2) {
    PyErr_SetString(PyExc_TypeError, "launch_seq: (sequence, stream, *inputs)");
    return NULL;
  }
  Seq *seq = (Seq *)PyCapsule_GetPointer(args[0], "launch_seq");
  if (!seq) return NULL;
  if (nargs != 2 + seq->ninputs) {
    PyErr_Format(PyExc_TypeError, "launch_seq: %zd inputs expected, got %zd", seq->ninputs, nargs - 2);
    return NULL;
  }
  *stream = PyLong_AsUnsignedLongLong(args[1]);
  if (PyErr_Occurred()) return NULL;
  uint64_t inputs[16];
  if (seq->ninputs > 16) {
    PyErr_SetString(PyExc_ValueError, "launch_seq: at most 16 inputs");
    return NULL;
  }
  for (Py_ssize_t i = 0; i < seq->ninputs; i++) {
    inputs[i] = PyLong_AsUnsignedLongLong(args[2 + i]);
    if (PyErr_Occurred()) return NULL;
  }
  for (Py_ssize_t i = 0; i < seq->n; i++) {
    Launch *l = &seq->launches[i];
    for (Py_ssize_t p = 0; p < l->npatch; p++) l->slots[l->patch_slot[p]] = inputs[l->patch_input[p]];
  }
  return seq;
}

/* run(sequence, stream, *inputs) -> True, or False (nothing launched) where the current context is not the one
   the kernels were loaded in */
static PyObject *seq_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  uint64_t stream;
  Seq *seq = prepare(args, nargs, &stream);
  if (!seq) return NULL;
  if (!seq->ctx) {
    PyErr_SetString(PyExc_RuntimeError, "launch_seq: this sequence was built without the driver check");
    return NULL;
  }
  CUcontext current = NULL;
  if (ctx_get(&current) != CUDA_SUCCESS || current != seq->ctx) Py_RETURN_FALSE;
  for (Py_ssize_t i = 0; i < seq->n; i++) {
    Launch *l = &seq->launches[i];
    CUlaunchAttribute attr;
    CUlaunchConfig config;
    memset(&config, 0, sizeof(config));
    config.gridDimX = l->grid[0];
    config.gridDimY = l->grid[1];
    config.gridDimZ = l->grid[2];
    config.blockDimX = l->block;
    config.blockDimY = 1;
    config.blockDimZ = 1;
    config.sharedMemBytes = l->smem;
    config.hStream = (CUstream)(uintptr_t)stream;
    if (l->pdl) {
      attr.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
      attr.value.programmaticStreamSerializationAllowed = 1;
      config.attrs = &attr;
      config.numAttrs = 1;
    }
    CUresult rc = launch_ex(&config, l->function, l->params, NULL);
    if (rc != CUDA_SUCCESS) {
      const char *msg = "unknown error";
      error_string(rc, &msg);
      PyErr_Format(PyExc_RuntimeError, "launch_seq: launch %zd of %zd failed: %s", i, seq->n, msg);
      return NULL;
    }
  }
  Py_RETURN_TRUE;
}

/* dry(sequence, stream, *inputs) -> what run would launch: per kernel (function, grid, block, smem, stream, pdl,
   slots as bytes) */
static PyObject *seq_dry(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  uint64_t stream;
  Seq *seq = prepare(args, nargs, &stream);
  if (!seq) return NULL;
  PyObject *out = PyList_New(seq->n);
  if (!out) return NULL;
  for (Py_ssize_t i = 0; i < seq->n; i++) {
    Launch *l = &seq->launches[i];
    PyObject *item = Py_BuildValue("K(III)IIKiy#", (unsigned long long)(uintptr_t)l->function, l->grid[0],
                                   l->grid[1], l->grid[2], l->block, l->smem, (unsigned long long)stream, l->pdl,
                                   (const char *)l->slots, l->nparams * 8);
    if (!item) {
      Py_DECREF(out);
      return NULL;
    }
    PyList_SET_ITEM(out, i, item);
  }
  return out;
}

static PyMethodDef methods[] = {
    {"new", seq_new, METH_VARARGS, NULL},
    {"run", (PyCFunction)(void (*)(void))seq_run, METH_FASTCALL, NULL},
    {"dry", (PyCFunction)(void (*)(void))seq_dry, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "mustafar_launch_seq", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_mustafar_launch_seq(void) { return PyModule_Create(&module); }
"""

# Triton's parameter types (``CompiledKernel.src.signature``) as (struct format of the slot's low bytes, the size the
# kernel takes): ints as they are, floats as their storage bits (bf16: fp32's high half, as Triton packs it)
_SLOT = {
    "i1": ("<b", 1), "i8": ("<b", 1), "i16": ("<h", 2), "i32": ("<i", 4), "i64": ("<q", 8),
    "u1": ("<B", 1), "u8": ("<B", 1), "u16": ("<H", 2), "u32": ("<I", 4), "u64": ("<Q", 8),
    "fp16": ("<e", 2), "bf16": ("bf16", 2), "fp32": ("<f", 4), "f32": ("<f", 4), "fp64": ("<d", 8),
}  # fmt: skip


@functools.cache
def _module() -> ModuleType | None:
    """The compiled C module, or None (said once in the log) where it cannot be built."""
    try:
        import triton
        from triton.runtime.build import compile_module_from_src

        include = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "include")
        return compile_module_from_src(_SOURCE, "mustafar_launch_seq", include_dirs=[include])
    except Exception as err:  # noqa: BLE001 (any build failure leaves Triton's own launcher in use)
        _LOG.warning(
            "mustafar: the one-call launch sequence could not be built (%s); using Triton's launcher", err
        )
        return None


def _slot(ty: str, value: object) -> bytes:
    """One parameter's 8-byte slot as Triton's launcher would pass the value (pointers: the address as an int)."""
    if ty.startswith("*"):
        return struct.pack("<Q", value)
    fmt, _ = _SLOT[ty]
    if fmt == "bf16":
        return struct.pack("<H", struct.unpack("<I", struct.pack("<f", value))[0] >> 16).ljust(8, b"\0")
    return struct.pack(fmt, value).ljust(8, b"\0")


def pack_launch(kernel: object, grid: tuple[int, int, int], args: tuple, inputs: dict[int, int]) -> tuple:
    """One kernel's entry of :func:`build`: ``args`` every argument of the kernel in declaration order (constexprs
    included, as the C launcher takes them; pointers as ints); ``inputs`` maps an argument's position to the
    sequence input that replaces it at each call. Raises ValueError for what Triton's launcher would pass otherwise
    (tensor descriptors, tuples, clusters, scratch buffers)."""
    signature = list(kernel.src.signature.values())
    if len(signature) != len(args):
        raise ValueError(f"{len(args)} arguments for a kernel of {len(signature)} parameters")
    run = kernel.run
    if getattr(run, "global_scratch_size", 0) or getattr(run, "profile_scratch_size", 0):
        raise ValueError("the kernel needs scratch buffers allocated per launch")
    num_warps, num_ctas, shared = kernel.packed_metadata
    if num_ctas != 1 or getattr(run, "launch_cooperative_grid", False):
        raise ValueError("clusters and cooperative launches are not packed")
    slots, sizes, patches = [], [], []
    for at, (ty, value) in enumerate(zip(signature, args)):
        if ty == "constexpr":
            if at in inputs:
                raise ValueError(f"argument {at} is a compile-time constant: it cannot change per call")
            continue
        if not isinstance(ty, str) or not (ty.startswith("*") or ty in _SLOT):
            raise ValueError(f"argument {at} has a parameter type {ty!r} that is not packed")
        if at in inputs:
            patches.append((len(slots), inputs[at]))
        slots.append(_slot(ty, 0 if at in inputs else value))
        sizes.append(8 if ty.startswith("*") else _SLOT[ty][1])
    # Triton's launcher ends every kernel's parameters with the global and profile scratch pointers (none here)
    slots += [bytes(8), bytes(8)]
    sizes += [8, 8]
    gx, gy, gz = grid
    pdl = int(bool(getattr(run, "launch_pdl", False)))
    return (
        kernel.function,
        gx,
        gy,
        gz,
        32 * num_warps,
        shared,
        pdl,
        b"".join(slots),
        tuple(sizes),
        tuple(patches),
    )


class LaunchSequence:
    """Kernels launched in order by one C call; per call only the ``ninputs`` values change (addresses or counts,
    unsigned 64-bit; an i32 parameter reads the low four bytes). Call
    ``seq.run(seq.handle, stream, *inputs)`` (bound once by the caller: no Python frame per call): True once
    launched, False (nothing launched) where the current CUDA context is not the one the kernels were loaded in."""

    def __init__(self, launches: list[tuple], ninputs: int, check: bool = True) -> None:
        """``launches`` from :func:`pack_launch`. ``check``: compare each kernel's parameters with the driver's
        (needs the GPU; without it the sequence can only be :meth:`dry`-run). Raises RuntimeError where the C
        module is unavailable, ValueError where the driver disagrees with the packing."""
        mod = _module()
        if mod is None:
            raise RuntimeError(
                "the one-call launch sequence is unavailable (its C module could not be built)"
            )
        self._mod = mod
        self.handle = mod.new(tuple(launches), ninputs, check)
        self.run = mod.run

    def dry(self, stream: int, *inputs: int) -> list[tuple]:
        """What :attr:`run` would launch, without the driver: per kernel (function, grid, threads, shared bytes,
        stream, PDL, the parameter slots as bytes)."""
        return self._mod.dry(self.handle, stream, *inputs)
