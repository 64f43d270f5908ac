"""Backend choice: Triton kernels for CUDA tensors, the PyTorch references elsewhere.

``backend="auto"`` picks Triton when the data lives on a CUDA device and PyTorch otherwise; ``"triton"`` forces
the kernels (on CPU tensors they run under ``TRITON_INTERPRET=1``, which is how the tests exercise them);
``"torch"`` forces the references. Triton needs head_dim 64 or 128; on ``auto`` other head dims fall back to torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mustafar.formats.bitmap import CompressedStore, pack_reference

BACKENDS = ("auto", "triton", "torch")
TRITON_HEAD_DIMS = (64, 128)


def resolve_backend(backend: str, device: torch.device, head_dim: int) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and head_dim in TRITON_HEAD_DIMS else "torch"
    if backend == "triton" and head_dim not in TRITON_HEAD_DIMS:
        raise ValueError(f"Triton kernels support head_dim {TRITON_HEAD_DIMS}, got {head_dim}")
    return backend


def pack_into(
    store: CompressedStore, rows: Tensor, mask: Tensor, counts: Tensor, backend: str = "auto"
) -> None:
    """Append ``rows`` under ``mask`` to ``store`` (counts validated by the store)."""
    if resolve_backend(backend, rows.device, store.head_dim) == "triton":
        from mustafar.kernels.compress import pack_triton

        pack_triton(store, rows, mask, counts)
    else:
        pack_reference(store, rows, mask, counts)


def topk_pack_into(store: CompressedStore, rows: Tensor, keep: int, backend: str = "auto") -> None:
    """Append the per-token top-``keep`` of ``rows`` to ``store``."""
    if resolve_backend(backend, rows.device, store.head_dim) == "triton":
        from mustafar.kernels.compress import topk_pack_triton

        topk_pack_triton(store, rows, keep)
    else:
        from mustafar.kernels.reference import topk_pack_reference

        topk_pack_reference(store, rows, keep)


def _check_decode_inputs(
    q: Tensor, k_store: CompressedStore, v_store: CompressedStore, k_window: Tensor, v_window: Tensor
) -> None:
    if q.dim() != 3:
        raise ValueError(f"q must be [B, H_q, D], got shape {tuple(q.shape)}")
    b, hq, d = q.shape
    for name, st in (("k_store", k_store), ("v_store", v_store)):
        if (st.batch, st.head_dim) != (b, d) or st.heads != k_store.heads:
            raise ValueError(f"{name} is [{st.batch}, {st.heads}, T, {st.head_dim}], q is {tuple(q.shape)}")
        if st.dtype != q.dtype:
            raise ValueError(f"{name} dtype {st.dtype} does not match q dtype {q.dtype}")
    if hq % k_store.heads:
        raise ValueError(f"H_q={hq} is not a multiple of H_kv={k_store.heads}")
    if k_store.length != v_store.length:
        raise ValueError(f"k_store holds {k_store.length} tokens, v_store {v_store.length}")
    expect = (b, k_store.heads, k_window.shape[2] if k_window.dim() == 4 else -1, d)
    for name, win in (("k_window", k_window), ("v_window", v_window)):
        if win.dim() != 4 or tuple(win.shape) != expect:
            raise ValueError(f"{name} must be {list(expect)}, got {tuple(win.shape)}")
        if win.dtype != q.dtype:
            raise ValueError(f"{name} dtype {win.dtype} does not match q dtype {q.dtype}")
    if k_store.length + k_window.shape[2] == 0:
        raise ValueError("nothing to attend to: the stores and the window are both empty")


def sparse_decode_attention(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    k_window: Tensor,
    v_window: Tensor,
    scale: float,
    backend: str = "auto",
    **triton_options,
) -> Tensor:
    """softmax(scale·q·[K_c; K_w]ᵀ)·[V_c; V_w] with GQA; returns [B, H_q, D] in q.dtype.

    ``triton_options`` (num_splits, block_n, num_warps, num_stages, group, version, prefetch, prefetch_l1, maxnreg,
    out) tune the Triton launch or give it a preallocated output.
    """
    _check_decode_inputs(q, k_store, v_store, k_window, v_window)
    if resolve_backend(backend, q.device, q.shape[-1]) == "torch":
        from mustafar.kernels.reference import decode_attention_reference

        return decode_attention_reference(q, k_store, v_store, k_window, v_window, scale)
    from mustafar.kernels.decode import sparse_decode_triton

    q = q if q.stride(-1) == 1 else q.contiguous()
    k_window = k_window if k_window.stride(-1) == 1 else k_window.contiguous()
    v_window = v_window if v_window.stride(-1) == 1 else v_window.contiguous()
    return sparse_decode_triton(q, k_store, v_store, k_window, v_window, scale, **triton_options)
