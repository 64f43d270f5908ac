"""The public ops and every choice they make from the data: backend, decoder, and their input checks.

``backend="auto"`` picks Triton when the data lives on a CUDA device and the head dim is one of
:data:`~mustafar.kernels.support.HEAD_DIMS`, PyTorch otherwise; ``"triton"`` forces the kernels (on CPU tensors
they run under ``TRITON_INTERPRET=1``, which is how the tests exercise them); ``"torch"`` forces the references.
Among the Triton decoders, :func:`decoder_for` picks by dtype, head dim, GQA group, GPU and the stores' layout.
Launch knobs (split count, tile size, warps) are chosen per shape inside :mod:`mustafar.kernels.decode`.
"""

from __future__ import annotations

import importlib
import math
import numbers
import operator
import sys
from types import ModuleType

import torch
from torch import Tensor

from mustafar.formats.bitmap import CompressedStore
from mustafar.kernels.reference import decode_attention_reference, pack_reference, topk_pack_reference
from mustafar.kernels.scatter_ptx import SCORE_HEADS, expands_keys, store_quotas
from mustafar.kernels.support import HEAD_DIMS, fp8_convert_capable, gluon_capable, interpreting, warn_once

BACKENDS = ("auto", "triton", "torch")
_LOG2E = 1.4426950408889634  # the kernels' softmax runs in base 2 on scale·log2(e)
_FP32_MAX = float(torch.finfo(torch.float32).max)


def resolve_backend(backend: str, device: torch.device, head_dim: int) -> str:
    """``"triton"`` or ``"torch"`` for data on ``device`` with ``head_dim`` (module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and head_dim in HEAD_DIMS else "torch"
    if backend == "triton" and head_dim not in HEAD_DIMS:
        raise ValueError(f"Triton kernels support head_dim {HEAD_DIMS}, got {head_dim}")
    if backend == "triton" and device.type != "cuda" and not interpreting():
        raise ValueError(
            f"backend='triton' on {device.type} tensors runs only under the Triton interpreter "
            "(TRITON_INTERPRET=1); use backend='torch' or CUDA tensors"
        )
    return backend


def decoder_for(q: Tensor, k_store: CompressedStore, v_store: CompressedStore) -> str:
    """The Triton decoder for these inputs: ``"scatter"`` (its decode work scales with the kept values; fp8 codes
    too, :mod:`mustafar.kernels.decode_scatter`) on a compiled sm_80+ GPU with fixed layouts, fp16/bf16 queries, a
    supported head dim, both stores holding word quotas (``keep_rule="word"``) and a GQA group of at most 8 query
    heads (fp8 codes: sm_89+); ``"staged"`` (Gluon, :mod:`mustafar.kernels.decode_staged`) on a compiled sm_80+ GPU
    with fixed layouts on both sides, fp16/bf16 values (no fp8 codes), a supported head dim and a GQA group of at
    most 16 query heads;
    ``"portable"`` (plain Triton, also runs in the interpreter) for everything else."""
    compiled = (
        gluon_capable(q.device)
        and k_store.fixed
        and v_store.fixed
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] in HEAD_DIMS
    )
    n_rep = q.shape[1] // k_store.heads
    fp8 = k_store.fp8 or v_store.fp8
    fp8_ok = not fp8 or fp8_convert_capable(q.device)
    if compiled and store_quotas(k_store) and store_quotas(v_store) and n_rep <= SCORE_HEADS and fp8_ok:
        return "scatter"
    if compiled and n_rep <= 16 and not fp8:
        return "staged"
    return "portable"


def pack_into(store: CompressedStore, rows: Tensor, mask: Tensor, backend: str = "auto") -> None:
    """Append ``rows`` [B, H, n, D] to ``store`` keeping the entries where ``mask`` is True (kept zeros stay)."""
    kind = resolve_backend(backend, rows.device, store.head_dim)
    store.check_rows(rows, mask)
    _check_device("rows", rows, store)
    _check_device("mask", mask, store)
    if rows.shape[2] == 0:
        return
    if kind == "triton":
        from mustafar.kernels.compress import pack_triton

        pack_triton(store, rows, mask)
    else:
        pack_reference(store, rows, mask)


def topk_pack_into(store: CompressedStore, rows: Tensor, keep: int, backend: str = "auto") -> None:
    """Prune ``rows`` [B, H, n, D] to their per-token top-``keep`` by |x| (ties: lower channel first) and append
    them to ``store``; on a ``word_quota`` store the top-k runs per 32-channel word against the store's quotas
    (the ``word`` keep rule)."""
    kind = resolve_backend(backend, rows.device, store.head_dim)
    store.check_rows(rows)
    _check_device("rows", rows, store)
    try:
        keep = operator.index(keep)  # numpy and 0-d tensor integers too; never a float
    except TypeError:
        raise ValueError(f"keep must be an integer count of kept values per token, got {keep!r}") from None
    if not 0 < keep <= store.head_dim:
        raise ValueError(f"keep must be in [1, {store.head_dim}], got {keep}")
    if store.fixed and keep != store.keep:
        raise ValueError(f"this store keeps {store.keep} values per token, got keep={keep}")
    if rows.shape[2] == 0:
        return
    if kind == "triton":
        from mustafar.kernels.compress import topk_pack_triton

        topk_pack_triton(store, rows, keep)
    else:
        topk_pack_reference(store, rows, keep)


def _check_device(name: str, t: Tensor, store: CompressedStore) -> None:
    if t.device != store.bits.device:
        raise ValueError(f"{name} is on {t.device}, the store on {store.bits.device}: put them on one device")


def _scale(scale: object) -> float:
    """The scores' factor as a Python float (numpy and 0-d tensor scalars too), finite and small enough that
    the kernels' scale·log2(e) stays a finite fp32."""
    if type(scale) is float and abs(scale) * _LOG2E <= _FP32_MAX:  # the usual call, checked in one line
        return scale
    if isinstance(scale, bool) or not (
        isinstance(scale, numbers.Real) or (isinstance(scale, Tensor) and scale.numel() == 1)
    ):
        raise ValueError(
            f"scale={scale!r} must be a real number (the scores' factor, usually head_dim ** -0.5)"
        )
    value = float(scale)
    if not math.isfinite(value) or abs(value) * _LOG2E > _FP32_MAX:
        raise ValueError(
            f"scale={value!r} must be a finite number below {_FP32_MAX / _LOG2E:.3g} in magnitude (the scores' "
            "factor, usually head_dim ** -0.5)"
        )
    return value


def _check_decode_inputs(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    k_window: Tensor,
    v_window: Tensor,
    scale: float,
    out: Tensor | None,
) -> None:
    """Shapes, dtypes, devices and layouts only: never a device value (a static store's length stays on the
    device, so its emptiness and the K/V agreement of its counts are the caller's to keep). Every call pays for
    these checks (the eager op's host time), so each field is read once."""
    if q.dim() != 3:
        raise ValueError(f"q must be [B, H_q, D], got shape {tuple(q.shape)}")
    b, hq, d = q.shape
    dtype, device = q.dtype, q.device
    heads = k_store.heads
    for name, st in (("k_store", k_store), ("v_store", v_store)):
        if st.batch != b or st.head_dim != d or st.heads != heads:
            raise ValueError(f"{name} is [{st.batch}, {st.heads}, T, {st.head_dim}], q is {tuple(q.shape)}")
        if st.dtype != dtype:
            raise ValueError(f"{name} dtype {st.dtype} does not match q dtype {dtype}")
        if st.bits.device != device:
            raise ValueError(f"{name} is on {st.bits.device}, q on {device}: put them on one device")
    if hq % heads:
        raise ValueError(f"H_q={hq} is not a multiple of H_kv={heads}")
    static = k_store.static
    if static != v_store.static:
        raise ValueError(f"k_store static={static} but v_store static={v_store.static}: make both alike")
    if not static and k_store.length != v_store.length:
        raise ValueError(f"k_store holds {k_store.length} tokens, v_store {v_store.length}")
    shape = k_window.shape
    w = shape[2] if len(shape) == 4 else -1
    for name, win in (("k_window", k_window), ("v_window", v_window)):
        s = win.shape
        if len(s) != 4 or s[0] != b or s[1] != heads or s[2] != w or s[3] != d:
            raise ValueError(f"{name} must be {[b, heads, w, d]}, got {tuple(s)}")
        if win.dtype != dtype:
            raise ValueError(f"{name} dtype {win.dtype} does not match q dtype {dtype}")
        if win.device != device:
            raise ValueError(f"{name} is on {win.device}, q on {device}: put them on one device")
    if w == 0 and (k_store.capacity == 0 if static else k_store.length == 0):
        raise ValueError("nothing to attend to: the stores and the window are both empty")
    if out is not None and (
        out.shape != q.shape or out.dtype != dtype or not out.is_contiguous() or out.device != device
    ):
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {tuple(q.shape)} on {device}")


def sparse_decode_attention(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    k_window: Tensor,
    v_window: Tensor,
    scale: float,
    backend: str = "auto",
    out: Tensor | None = None,
) -> Tensor:
    """softmax(scale·q·[K_c; K_w]ᵀ)·[V_c; V_w] with GQA: q [B, H_q, D], stores and windows [B, H_kv, ·, D];
    returns [B, H_q, D] in q.dtype (written into ``out`` when given).

    Static stores (``CompressedStore(..., static=True)``) are read up to their device-side length with a launch
    plan fixed for their capacity: no host synchronisation, the same launch at every length, so the call can be
    captured in a CUDA graph (after one eager call) and replayed as the stores grow. The caller keeps the K and V
    counts equal (the kernels attend to the smaller) and the attended set non-empty (an empty static store with an
    empty window gives NaN: that cannot be checked without reading the device).
    """
    if type(scale) is float and (backend == "auto" or backend == "triton"):
        plan = k_store.launch_plan  # the last call's launch, replayed when nothing it depends on changed
        decode = sys.modules.get("mustafar.kernels.decode")
        if plan is not None and decode is not None:
            got = decode._replay(plan, q, k_store, v_store, k_window, v_window, scale, out)
            if got is not None:
                return got
    scale = _scale(scale)
    _check_decode_inputs(q, k_store, v_store, k_window, v_window, scale, out)
    if resolve_backend(backend, q.device, q.shape[-1]) == "torch":
        ref = decode_attention_reference(q, k_store, v_store, k_window, v_window, scale)
        return ref if out is None else out.copy_(ref)
    # imported on first use (it imports Triton); afterwards a dict lookup, not an import statement per call
    decode = sys.modules.get("mustafar.kernels.decode") or importlib.import_module("mustafar.kernels.decode")
    if q.stride()[-1] != 1:
        q = q.contiguous()
    if k_window.stride()[-1] != 1:
        k_window = k_window.contiguous()
    if v_window.stride()[-1] != 1:
        v_window = v_window.contiguous()
    cfg = _config_for(decode, q, k_store, v_store)
    return decode._run(cfg, q, k_store, v_store, k_window, v_window, scale, out, keep_plan=True)


def _config_for(decode: ModuleType, q: Tensor, k_store: CompressedStore, v_store: CompressedStore) -> object:
    """The public op's launch configuration (``decode._Config``) for these inputs' layout, cached in ``decode``
    per (device, dtype, query heads, both stores' ``layout_key``): the decoder is chosen and checked once per
    layout. A refused layout is not cached: it raises on every call."""
    key = (q.device, q.dtype, q.shape[1], k_store.layout_key, v_store.layout_key)
    cfg = decode._PUBLIC_CONFIGS.get(key)
    if cfg is None:
        decoder = _checked_decoder(q, k_store, v_store)
        cfg = decode._PUBLIC_CONFIGS[key] = decode._configure(q, k_store, v_store, decoder, None, None)
    return cfg


def _checked_decoder(q: Tensor, k_store: CompressedStore, v_store: CompressedStore) -> str:
    """:func:`decoder_for` and :func:`_check_store_order`. Both read only what the stores' ``layout_key`` holds,
    so the op runs them once per layout in :func:`_config_for` (per call they cost about a fifth of the op's host
    time, results/kernels/scatter_h200/run13/host/)."""
    decoder = decoder_for(q, k_store, v_store)
    _check_store_order(k_store, v_store, decoder)
    _hint_word_quotas(q, k_store, v_store, decoder)
    return decoder


def _hint_word_quotas(q: Tensor, k_store: CompressedStore, v_store: CompressedStore, decoder: str) -> None:
    """Say once per process when a GPU that runs the scatter decoder decodes two pruned fixed-layout stores with a
    slower one only because they hold no word quotas: compressed mode's default keep rule (``exact``) packs such
    stores, and nothing else would tell a user that ``kv.keep_rule=word`` (the same count per token) decodes
    faster."""
    if decoder == "scatter" or not gluon_capable(q.device) or q.shape[1] // k_store.heads > SCORE_HEADS:
        return
    if (k_store.fp8 or v_store.fp8) and not fp8_convert_capable(q.device):
        return
    if not all(st.fixed and st.keep < st.head_dim and store_quotas(st) is None for st in (k_store, v_store)):
        return
    message = (
        f"mustafar: these K and V stores hold no word quotas (keep rule exact or reference), so decode runs the "
        f"{decoder} decoder; the scatter decoder, faster on this GPU, reads stores packed under kv.keep_rule=word "
        "(the same count per token, split into fixed quotas per 32-channel word)"
    )
    warn_once(message, UserWarning, stacklevel=4)


def _check_store_order(k_store: CompressedStore, v_store: CompressedStore, decoder: str) -> None:
    """Refuse strided N:M stores (channels held in the groups' order) that the chosen decoder would read as if in
    channel order: only the scatter decoder's expanded keys (q loaded in the K store's order) read them, and
    the same keys under per-head orders (the calibrated ``nm8c`` and ``nm16c`` rules); per-head orders on values
    are read by the PyTorch decoder only."""
    keys_read = decoder == "scatter" and expands_keys(k_store, v_store)  # q loaded in the K store's order
    for side, st in (("V", v_store), ("K", k_store)):  # a V order also stops its keys' expansion: name it
        if st.head_order is not None and not (side == "K" and keys_read):
            raise ValueError(
                f"the {side} store holds a per-head channel order (kv keep rule nm8c or nm16c), which the Triton "
                "decoders read only for keys kept four of every eight channels at half the head dim with values kept "
                "two of every four, or five of every sixteen as fp8 codes beside values kept alike, on a GPU that "
                f"runs the scatter decoder (this call: the {decoder} decoder); use backend='torch' "
                "(MUSTAFAR_KERNEL_BACKEND=torch), kv.mode=mask, kv=k50v50_kn8c_vnm4 or kv=k69v69_kn16c_vnm16_fp8"
            )
    if not (k_store.nm_strided or v_store.nm_strided):
        return
    if keys_read:  # its V rows are in channel order
        return
    got = ", ".join(
        f"{side} nm_group={st.nm_group} keep={st.keep} of {st.head_dim}{' fp8' if st.fp8 else ''}"
        for side, st in (("K", k_store), ("V", v_store))
        if st.nm_strided
    )
    raise ValueError(
        f"strided N:M stores ({got}) are read by the Triton decoders only as keys kept four of every eight "
        "channels at half the head dim, with values kept two of every four consecutive channels in the same value "
        "type (both fp16/bf16 or both fp8), on a "
        f"GPU that runs the scatter decoder (this call: the {decoder} decoder); use backend='torch' "
        "(MUSTAFAR_KERNEL_BACKEND=torch), kv.mode=mask, or kv=k50v50_kn8s_vnm4"
    )
