"""Cheap kernel launches: a compiled Triton/Gluon kernel relaunched through its C launcher, without the JIT
dispatcher's per-call argument binding (the decoders and the prune+pack kernels share it)."""

from __future__ import annotations

import functools
import operator

import torch
from torch import Tensor
from triton import knobs


class CompiledLaunch:
    """Launches one Triton/Gluon kernel without the JIT dispatcher's per-call argument binding.

    The dispatcher binds and specialises every argument on every call (tens of µs for these kernels' ~30
    arguments). Here the compiled kernel is cached under what Triton specialises on (each tensor's 16-byte
    alignment, each int's value 1, divisibility by 16 and 32-bit range; argument dtypes and constexprs are fixed
    per instance by its owner's cache key) and relaunched through its C launcher. A miss, a launch hook (a profiler)
    or the interpreter goes through the dispatcher, which finds or compiles the kernel: this caches what Triton
    would pick, nothing else. Runtime arguments are positional, in declaration order (the constexprs follow them
    in every kernel here).
    """

    def __init__(self, fn: object, constexprs: dict, options: dict) -> None:
        self.fn, self.constexprs, self.options = fn, constexprs, options
        self.runtime_names = [n for n in fn.arg_names if n not in constexprs]
        # the C launcher takes every parameter in declaration order, constexprs included (ignored)
        self.tail = tuple(constexprs[n] for n in fn.arg_names if n in constexprs)
        if list(fn.arg_names) != self.runtime_names + list(constexprs):
            raise TypeError(f"{fn}: the constexpr parameters must follow the runtime ones")
        self.kernels: dict[tuple, object] = {}
        # key -> (the C launch function, its arguments between the stream and the kernel's own): see launch()
        self.direct: dict[tuple, tuple] = {}

    def __call__(
        self, grid: tuple[int, int, int], args: tuple, stream: int, key: tuple | None = None
    ) -> object:
        """Launch a three-dimensional ``grid`` with ``args``; ``key`` (from :func:`spec_key`, when the caller knows
        which arguments are tensors and which ints) saves the generic per-argument classification."""
        # the dispatcher pads a shorter grid; the C launcher takes all three and would read the arguments shifted
        if len(grid) != 3:
            raise ValueError(f"CompiledLaunch needs a three-dimensional grid, got {grid}")
        if key is None:
            key = tuple(
                [
                    a.data_ptr() % 16 == 0
                    if isinstance(a, Tensor)
                    else (a == 1, a % 16 == 0, -(2**31) <= a < 2**31)
                    if type(a) is int
                    else type(a)
                    for a in args
                ]
            )
        kernel = self.kernels.get(key)
        if kernel is None or hooked():
            kernel = self.fn[grid](**dict(zip(self.runtime_names, args)), **self.constexprs, **self.options)
            if kernel is not None and hasattr(kernel, "function"):  # the interpreter returns nothing to cache
                self.kernels[key] = kernel
                self._direct(key, kernel)
            return kernel
        kernel.run(
            *grid, stream, kernel.function, kernel.packed_metadata, None, None, None, *args, *self.tail
        )
        return kernel

    def _direct(self, key: tuple, kernel: object) -> None:
        """Cache the C launch function of ``kernel`` and its fixed arguments where nothing per launch is left to
        Triton's Python launcher (no global or profiler scratch to allocate)."""
        run = kernel.run
        names = (
            "launch",
            "launch_cooperative_grid",
            "launch_pdl",
            "global_scratch_size",
            "profile_scratch_size",
        )
        if not all(hasattr(run, n) for n in names) or run.global_scratch_size or run.profile_scratch_size:
            return
        # CudaLauncher.__call__'s order: function, cooperative, PDL, global and profile scratch, metadata, the
        # launch metadata and the two hooks (none: a hooked launch goes through Triton)
        fixed = (
            run.launch_cooperative_grid,
            run.launch_pdl,
            None,
            None,
            kernel.packed_metadata,
            None,
            None,
            None,
        )
        self.direct[key] = (run.launch, (kernel.function, *fixed))

    def launch(self, grid: tuple[int, int, int], args: tuple, stream: int, key: tuple) -> bool:
        """Launch the kernel compiled under ``key`` straight through its C launch function; False (nothing
        launched) where none is cached for ``key`` yet or a launch hook is installed: then call the instance with
        tensors. ``args`` may hold pointers as ints (``data_ptr()``): the C launcher checks each tensor's address
        with the driver (``cuPointerGetAttribute``), an int it takes as it is, so the caller, which checked the
        devices once, saves a driver call per pointer (round 30)."""
        entry = self.direct.get(key)
        if entry is None or hooked():
            return False
        gx, gy, gz = grid
        entry[0](gx, gy, gz, stream, *entry[1], *args, *self.tail)
        return True


_LAUNCHES: dict[tuple, CompiledLaunch] = {}


def cached_launch(
    kernel: object, constexprs: dict, num_warps: int, dtypes: tuple, device: torch.device, pdl: bool = False
) -> CompiledLaunch:
    """The cached launch of ``kernel`` under these constexprs, warps and argument dtypes (those its owner does not
    pin by constexprs) on ``device`` (compiled kernels are loaded per device): for the kernels launched eagerly
    every step outside a configuration cache, the packs (the JIT dispatcher's argument binding cost them 54-87 µs
    of host time per call, results/decode/round22_h200/pack_host.txt) and the decoders' split merge. ``pdl``:
    launched as a programmatic dependent of the previous kernel on the stream (the kernel waits for it itself)."""
    key = (kernel, num_warps, dtypes, device, pdl, *constexprs.values())
    launch = _LAUNCHES.get(key)
    if launch is None:
        options = dict(num_warps=num_warps, launch_pdl=True) if pdl else dict(num_warps=num_warps)
        launch = _LAUNCHES[key] = CompiledLaunch(kernel, constexprs, options)
    return launch


def spec_key(ptrs: tuple, ints: tuple, lengths: tuple) -> tuple:
    """A cache key at least as fine as Triton's specialisation of these arguments: whether every tensor (its address
    in ``ptrs``) is 16-byte aligned (else each one's alignment), the ints as they are (shapes and strides: few
    distinct values) and, for ``lengths`` (ints that change every step), only what Triton looks at (== 1,
    divisible by 16)."""
    aligned = True if functools.reduce(operator.or_, ptrs) % 16 == 0 else tuple([p % 16 == 0 for p in ptrs])
    return (aligned, *ints, *map(length_spec, lengths))  # flat: hashed per call


def length_spec(n: int) -> int:
    """What Triton specialises an int argument on: 1 when it is 1, 16 when divisible by 16, else 0."""
    return 1 if n == 1 else 16 if n % 16 == 0 else 0


def hooked() -> bool:
    """Whether a launch hook (e.g. Triton's profiler) is installed: those launches take the dispatcher's path."""
    enter = knobs.runtime.launch_enter_hook
    return enter is not None and bool(getattr(enter, "calls", True))


def raw_stream(device: torch.device) -> int:
    """The current CUDA stream's handle (what Triton's dispatcher launches on; a graph's capture stream while
    capturing); 0 off the GPU."""
    return torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0
