"""Plain-PyTorch references: the CPU path of every kernel, and the oracle the Triton kernels are tested against."""

from __future__ import annotations

import torch
from torch import Tensor

from mustafar.formats.bitmap import CompressedStore, pack_bitmap
from mustafar.formats.fp8 import quantize


def pack_reference(store: CompressedStore, rows: Tensor, mask: Tensor) -> None:
    """Append ``rows`` under ``mask`` (both in channel order) to ``store``: the bitmap words and the kept values in
    the store's stored order (on an fp8 store their e4m3 codes and each token's scale)."""
    rows, mask = store.to_stored(rows), store.to_stored(mask)
    if store.fp8:
        codes, scales = quantize(rows, mask)
        store.append_packed(pack_bitmap(mask), codes[mask], scales)
        return
    store.append_packed(pack_bitmap(mask), rows[mask])


def topk_pack_reference(store: CompressedStore, rows: Tensor, keep: int) -> None:
    """Exact per-token top-``keep`` by |x| (ties: lower channel first; per-word quotas on a ``word_quota``
    store, per consecutive or strided group on an ``nm_group`` one), then the reference pack."""
    pack_reference(store, rows, store.kept_mask(rows.abs(), keep))


def decode_attention_reference(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    k_window: Tensor,
    v_window: Tensor,
    scale: float,
) -> Tensor:
    """softmax(scale·q·[K_c; K_w]ᵀ)·[V_c; V_w] over the decompressed stores, fp32 math (fp64 for fp64 inputs).

    Static stores are read as the kernels read them: each row up to its own count, the smaller of K's and V's (a
    row with nothing to attend to gives NaN)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    counts = None
    if k_store.static:
        counts = torch.minimum(k_store.length_tensor, v_store.length_tensor).to(torch.int64)
        stored = int(counts.max())
        k_dense, v_dense = k_store.to_dense(stored), v_store.to_dense(stored)
    else:
        k_dense, v_dense = k_store.to_dense(), v_store.to_dense()
    keys = torch.cat([k_dense.to(acc), k_window.to(acc)], dim=2)
    values = torch.cat([v_dense.to(acc), v_window.to(acc)], dim=2)
    b, hq, d = q.shape
    if (
        keys.shape[2] == 0
    ):  # nothing stored in any row and no window: softmax over nothing, as the kernels give
        return torch.full_like(q, float("nan"))
    hkv = keys.shape[1]
    qg = q.to(acc).view(b, hkv, hq // hkv, d)
    scores = torch.einsum("bgrd,bgtd->bgrt", qg, keys) * scale
    if counts is not None:  # slots past a row's count hold nothing it appended
        slot = torch.arange(keys.shape[2], device=keys.device)
        beyond = (slot[None, :] >= counts[:, None]) & (slot[None, :] < k_dense.shape[2])
        scores = scores.masked_fill(beyond[:, None, None, :], float("-inf"))
    out = torch.einsum("bgrt,bgtd->bgrd", scores.softmax(dim=-1), values)
    return out.reshape(b, hq, d).to(q.dtype)
