"""Triton prune+pack: rows go straight into a :class:`CompressedStore`'s preallocated slots.

One kernel, two modes (constexpr ``TOPK``):

* top-k: exact per-token top-``keep`` by |x|. The threshold is found by a bitwise binary search over the
  integer key ``bits(x) & 0x7FFF`` (0x7FFFFFFF for fp32), which orders |x| exactly for finite values; entries above
  the threshold are kept, ties at the threshold are kept in channel order until the row holds ``keep``.
* mask: the kept pattern is given (any count in the variable layout).

Destination: fixed layout ``vals[b, h, t0 + r, :]``; variable layout ``vals[b, h, offs[b, h, t0 + r]:]`` (offsets
written beforehand by the host). No concatenation, no host synchronisation in the top-k fixed path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mustafar.formats.bitmap import CompressedStore

_BLOCK_R = 8  # rows per program; with 2 warps the best of the H100 launch sweep (results/kernels)
_NUM_WARPS = 2


@triton.jit
def _abs_key(x, KEY_BITS: tl.constexpr):
    """Integer key that orders |x| exactly (sign bit cleared from the raw bits)."""
    if KEY_BITS == 15:
        key = x.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF
    else:
        key = x.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return key


@triton.jit
def _prune_pack_kernel(
    x_ptr,
    mask_ptr,
    bits_ptr,
    vals_ptr,
    offs_ptr,
    n_tok,
    heads,
    sxb,
    sxh,
    sxt,
    smb,
    smh,
    smt,
    t0,
    cap,
    val_cap,
    KEEP: tl.constexpr,
    SLOT: tl.constexpr,
    SLOT_P2: tl.constexpr,
    D: tl.constexpr,
    KEY_BITS: tl.constexpr,
    TOPK: tl.constexpr,
    VARIABLE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    SWAR: tl.constexpr,
):
    pid_r = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < n_tok
    c = tl.arange(0, D)
    x_off = b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + r[:, None].to(tl.int64) * sxt + c[None, :]
    x = tl.load(x_ptr + x_off, mask=rmask[:, None], other=0.0)

    if TOPK:
        key = _abs_key(x, KEY_BITS)
        thr = tl.zeros([BLOCK_R], dtype=tl.int32)
        if SWAR:
            # two 15-bit keys per int32 lane pair, each lane flagged with 0x8000: (0x8000 + key) - cand keeps bit 15
            # of its lane iff key >= cand and never borrows across lanes, so one subtract tests two keys.
            kp = tl.reshape(key, [BLOCK_R, D // 2, 2])
            lo, hi = tl.split(kp)
            flagged = (lo | (hi << 16)) | -0x7FFF8000  # 0x80008000 as an int32 literal
            for i in tl.static_range(KEY_BITS):
                cand = thr | (1 << (KEY_BITS - 1 - i))
                diff = flagged - (cand | (cand << 16))[:, None]
                both = tl.sum((diff >> 15) & 0x10001, axis=1)
                cnt = (both & 0xFFFF) + (both >> 16)
                thr = tl.where(cnt >= KEEP, cand, thr)
        else:
            for i in tl.static_range(KEY_BITS):
                cand = thr | (1 << (KEY_BITS - 1 - i))
                cnt = tl.sum((key >= cand[:, None]).to(tl.int32), axis=1)
                thr = tl.where(cnt >= KEEP, cand, thr)
        gt = key > thr[:, None]
        eq = key == thr[:, None]
        need = KEEP - tl.sum(gt.to(tl.int32), axis=1)
        tie_rank = tl.cumsum(eq.to(tl.int32), axis=1)
        keep = gt | (eq & (tie_rank <= need[:, None]))
    else:
        m_off = b.to(tl.int64) * smb + h.to(tl.int64) * smh + r[:, None].to(tl.int64) * smt + c[None, :]
        keep = tl.load(mask_ptr + m_off, mask=rmask[:, None], other=0) != 0

    keep_i = keep.to(tl.int32)
    pos = tl.cumsum(keep_i, axis=1) - 1
    slot = bh.to(tl.int64) * cap + t0 + r
    if VARIABLE:
        base = bh.to(tl.int64) * val_cap + tl.load(offs_ptr + slot, mask=rmask, other=0)
    else:
        base = slot * SLOT
    tl.store(vals_ptr + base[:, None] + pos, x, mask=keep & rmask[:, None])
    if not VARIABLE:
        if SLOT > KEEP:
            p = tl.arange(0, SLOT_P2)
            pad = tl.zeros([BLOCK_R, SLOT_P2], dtype=x.dtype)
            pad_mask = rmask[:, None] & (p[None, :] >= KEEP) & (p[None, :] < SLOT)
            tl.store(vals_ptr + base[:, None] + p[None, :], pad, mask=pad_mask)

    shifts = tl.arange(0, 32)
    words = tl.sum(tl.reshape(keep_i, [BLOCK_R, D // 32, 32]) << shifts[None, None, :], axis=2)
    w = tl.arange(0, D // 32)
    tl.store(bits_ptr + slot[:, None] * (D // 32) + w[None, :], words, mask=rmask[:, None])


def _check_triton_shape(store: CompressedStore) -> None:
    if store.head_dim not in (64, 128):
        raise ValueError(f"Triton kernels support head_dim 64 or 128, got {store.head_dim}")


def _launch(
    store: CompressedStore,
    rows: Tensor,
    mask: Tensor | None,
    keep: int,
    block_r: int = _BLOCK_R,
    num_warps: int = _NUM_WARPS,
    swar: bool = True,
) -> None:
    _check_triton_shape(store)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n = rows.shape[2]
    if mask is None:
        mask_arg, m_strides = rows, (0, 0, 0)
    else:
        mask_arg = mask if mask.stride(-1) == 1 else mask.contiguous()
        mask_arg = mask_arg.view(torch.int8)
        m_strides = mask_arg.stride()[:3]
    slot = store.slot if store.fixed else 1
    grid = (triton.cdiv(n, block_r), store.batch * store.heads)
    _prune_pack_kernel[grid](
        rows,
        mask_arg,
        store.bits,
        store.vals,
        store.bits if store.fixed else store.offs,
        n,
        store.heads,
        *rows.stride()[:3],
        *m_strides,
        store.length,
        store.capacity,
        store.vals.shape[2],
        KEEP=keep,
        SLOT=slot,
        SLOT_P2=triton.next_power_of_2(slot),
        D=store.head_dim,
        KEY_BITS=31 if store.dtype == torch.float32 else 15,
        TOPK=mask is None,
        VARIABLE=not store.fixed,
        BLOCK_R=block_r,
        SWAR=swar and store.dtype != torch.float32,
        num_warps=num_warps,
    )


def topk_pack_triton(store: CompressedStore, rows: Tensor, keep: int, **launch) -> None:
    """Fused exact top-``keep`` prune and pack of ``rows`` [B, H, n, D] into ``store``.

    ``launch`` (block_r, num_warps) overrides the launch shape (benchmarks)."""
    _check_triton_shape(store)
    n = rows.shape[2]
    if store.fixed:
        store.reserve(n)
        _launch(store, rows, None, keep, **launch)
    else:
        # variable layout: every token still holds exactly `keep` values, so offsets are arithmetic
        store.reserve(n, n * keep)
        start = store.row_nnz[:, :, None] + keep * torch.arange(n, device=store.device)
        store.offs[:, :, store.length : store.length + n] = start.to(torch.int32)
        store.row_nnz += n * keep
        _launch(store, rows, None, keep, **launch)
    store.length += n


def pack_triton(store: CompressedStore, rows: Tensor, mask: Tensor, counts: Tensor) -> None:
    """Pack ``rows`` under a given ``mask`` (counts = mask.sum(-1), already validated) into ``store``."""
    _check_triton_shape(store)
    n = rows.shape[2]
    if store.fixed:
        store.reserve(n)
    else:
        store.reserve(n, int(counts.sum(-1).max()))
        start = store.row_nnz[:, :, None] + counts.cumsum(-1) - counts
        store.offs[:, :, store.length : store.length + n] = start.to(torch.int32)
        store.row_nnz += counts.sum(-1)
    _launch(store, rows, mask, store.keep or 0)
    store.length += n
