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

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

try:  # Gluon (explicit layouts) for the GPU fast path; absent or unusable -> plain Triton everywhere
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    _GLUON = True
except ImportError:  # pragma: no cover
    _GLUON = False

from mustafar.formats.bitmap import CompressedStore
from mustafar.kernels._topk_ptx import make_asm, warp_smem_bytes

_BLOCK_R = 8  # rows per program; with 2 warps the best of the H100 launch sweep (results/kernels)
_NUM_WARPS = 2
# Gluon path: 32 rows per warp (one per thread); 1 warp = best K+V sum on H100 (results/kernels/NOTES.md)
_GL_WARPS = 1
# PTX path (round 4): same row-per-thread shape, launch width in warps; reload = re-read the row for the pack
# instead of holding it in registers through the search (slower on H100); accs = partial sums per search pass;
# coalesced = load a warp's (contiguous) rows coalesced and transpose them in shared memory
_PTX_WARPS = 1
_PTX_RELOAD = False
_PTX_ACCS = 1
_PTX_COALESCED = True


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


# ---------------------------------------------------------------------------------------------------------------------
# GPU fast path (Gluon, explicit layouts): one row per thread for the threshold search.
#
# The plain-Triton kernel above spreads a row over 16 lanes, so each of the 15 search passes ends in a cross-lane
# reduction (shuffle tree); those reductions, not the compares, dominated the round-2 SASS. Here the search runs in
# the layout ``_row`` (size_per_thread [1, D/2] on int32 key pairs: a thread holds its whole row), so every pass is
# 64 in-thread SWAR subtract/extract/adds; the tie ranks, output positions and bitmap words are in-thread scans and
# sums too. Only the value scatter runs in the coalesced layout (16 lanes per row, as before): the per-pair output
# positions (one byte each, 0xFF = dropped) cross over through shared memory in one ``convert_layout`` and the
# values are re-read (L1 hit) as int32 pairs in that layout. Fixed layout, fp16/bf16, top-k only; everything else
# (and the interpreter) uses ``_prune_pack_kernel``.
# ---------------------------------------------------------------------------------------------------------------------


@gluon.jit
def _gl_add(a, b):
    return a + b


@gluon.jit
def _topk_pack_gluon_kernel(
    x_ptr,  # int32 view of the fp16/bf16 rows: one key pair per element
    bits_ptr,
    vals_ptr,  # int16 view of the value slots
    n_tok,
    heads,
    sxb,
    sxh,
    sxt,  # strides in int32 units
    t0,
    cap,
    KEEP: gl.constexpr,
    SLOT: gl.constexpr,
    D: gl.constexpr,
):
    NW: gl.constexpr = gl.num_warps()
    P: gl.constexpr = D // 2
    BLOCK_R: gl.constexpr = 32 * NW
    row: gl.constexpr = gl.BlockedLayout([1, P], [32, 1], [NW, 1], [1, 0])
    col: gl.constexpr = gl.BlockedLayout([1, 4], [32 // (P // 4), P // 4], [NW, 1], [1, 0])
    pad_l: gl.constexpr = gl.BlockedLayout([1, 8], [32, 1], [NW, 1], [1, 0])

    pid_r = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // heads
    h = bh % heads
    x_base = b.to(gl.int64) * sxb + h.to(gl.int64) * sxh

    # ---- search: one row per thread ------------------------------------------------------------------------------
    r = pid_r * BLOCK_R + gl.arange(0, BLOCK_R, layout=gl.SliceLayout(1, row))
    rmask = r < n_tok
    pr = gl.arange(0, P, layout=gl.SliceLayout(0, row))
    w = gl.load(x_ptr + (x_base + r.to(gl.int64) * sxt)[:, None] + pr[None, :], mask=rmask[:, None], other=0)
    keys = w & 0x7FFF7FFF
    flagged = keys | -0x7FFF8000  # 0x80008000: (0x8000 + key) - cand keeps bit 15 of its lane iff key >= cand
    thr = gl.zeros([BLOCK_R], gl.int32, layout=gl.SliceLayout(1, row))
    for i in gl.static_range(15):
        cand = thr | (1 << (14 - i))
        diff = flagged - (cand | (cand << 16))[:, None]
        both = gl.sum((diff >> 15) & 0x10001, axis=1)
        cnt = (both & 0xFFFF) + (both >> 16)
        thr = gl.where(cnt >= KEEP, cand, thr)

    k_lo = keys & 0x7FFF
    k_hi = keys >> 16
    t2 = thr[:, None]
    gt_lo = (k_lo > t2).to(gl.int32)
    gt_hi = (k_hi > t2).to(gl.int32)
    eq_lo = (k_lo == t2).to(gl.int32)
    eq_hi = (k_hi == t2).to(gl.int32)
    need = KEEP - gl.sum(gt_lo + gt_hi, axis=1)
    eq_cum = gl.associative_scan(eq_lo + eq_hi, 1, _gl_add)  # tie rank of the hi lane; lo = that - eq_hi
    n2 = need[:, None]
    keep_lo = gt_lo | (eq_lo & ((eq_cum - eq_hi) <= n2).to(gl.int32))
    keep_hi = gt_hi | (eq_hi & (eq_cum <= n2).to(gl.int32))
    k_cum = gl.associative_scan(keep_lo + keep_hi, 1, _gl_add)
    pos_hi = gl.where(keep_hi != 0, k_cum - 1, 255)
    pos_lo = gl.where(keep_lo != 0, k_cum - keep_hi - 1, 255)

    slot = bh.to(gl.int64) * cap + t0 + r
    kb = (keep_lo | (keep_hi << 1)) << ((2 * pr[None, :]) & 31)
    words = gl.sum(gl.reshape(kb, [BLOCK_R, D // 32, 16]), axis=2)  # in-thread: disjoint bits, sum == or
    wl: gl.constexpr = gl.BlockedLayout([1, D // 32], [32, 1], [NW, 1], [1, 0])
    words = gl.convert_layout(words, wl)
    wj = gl.arange(0, D // 32, layout=gl.SliceLayout(0, wl))
    rw = gl.convert_layout(r, gl.SliceLayout(1, wl))
    sw = gl.convert_layout(slot, gl.SliceLayout(1, wl))
    gl.store(bits_ptr + (sw * (D // 32))[:, None] + wj[None, :], words, mask=(rw < n_tok)[:, None])
    if SLOT > KEEP:
        pp = KEEP + gl.arange(0, 8, layout=gl.SliceLayout(0, pad_l))
        rp = gl.convert_layout(r, gl.SliceLayout(1, pad_l))
        sp = gl.convert_layout(slot, gl.SliceLayout(1, pad_l))
        pad = gl.zeros([BLOCK_R, 8], gl.int16, layout=pad_l)
        gl.store(
            vals_ptr + (sp * SLOT)[:, None] + pp[None, :],
            pad,
            mask=(rp < n_tok)[:, None] & (pp < SLOT)[None, :],
        )

    # ---- value scatter in the coalesced layout ---------------------------------------------------------------------
    enc = gl.convert_layout((pos_lo | (pos_hi << 8)).to(gl.int16), col)
    rc = pid_r * BLOCK_R + gl.arange(0, BLOCK_R, layout=gl.SliceLayout(1, col))
    rcm = (rc < n_tok)[:, None]
    pc = gl.arange(0, P, layout=gl.SliceLayout(0, col))
    wc = gl.load(x_ptr + (x_base + rc.to(gl.int64) * sxt)[:, None] + pc[None, :], mask=rcm, other=0)
    e = enc.to(gl.int32)
    plo = e & 0xFF
    phi = (e >> 8) & 0xFF
    vbase = ((bh.to(gl.int64) * cap + t0 + rc) * SLOT)[:, None]
    gl.store(vals_ptr + vbase + plo, wc.to(gl.int16), mask=rcm & (plo != 255))
    gl.store(vals_ptr + vbase + phi, (wc >> 16).to(gl.int16), mask=rcm & (phi != 255))


# ---------------------------------------------------------------------------------------------------------------------
# GPU fast path, round 4: the same one-row-per-thread shape as above, but the whole per-row program is generated PTX
# (``mustafar.kernels._topk_ptx``: byte-lane threshold search, bitmap tie order, shared-memory compaction, coalesced
# copy-out), run through one ``inline_asm_elementwise`` per thread. Gluon supplies the per-row pointers and reserves
# the shared memory (the asm addresses it from ``global_smem``: the only allocation, so it sits at offset 0; the
# one-word load of it only keeps it alive). Needs 16-byte aligned rows; otherwise the kernel above runs.
# ---------------------------------------------------------------------------------------------------------------------


@gluon.jit
def _topk_pack_ptx_kernel(
    x_ptr,  # int32 view of the rows
    bits_ptr,
    vals_ptr,  # int32 view of the value slots
    n_tok,
    heads,
    sxb,
    sxh,
    sxt,  # strides in int32 units
    t0,
    cap,
    SLOT: gl.constexpr,
    D: gl.constexpr,
    SMEM_WORDS: gl.constexpr,
    ASM: gl.constexpr,
):
    NW: gl.constexpr = gl.num_warps()
    BLOCK_R: gl.constexpr = 32 * NW
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
    pid_r = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // heads
    h = bh % heads
    r = pid_r * BLOCK_R + gl.arange(0, BLOCK_R, layout=lay)
    rr = gl.minimum(r, n_tok - 1)  # rows past the end read the last row; nothing of theirs is stored
    x_base = b.to(gl.int64) * sxb + h.to(gl.int64) * sxh
    xp = x_ptr + x_base + rr.to(gl.int64) * sxt
    slot = bh.to(gl.int64) * cap + t0 + r
    buf = gl.allocate_shared_memory(gl.int32, [SMEM_WORDS], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    dep = buf.slice(0, BLOCK_R).load(lay)
    gl.inline_asm_elementwise(
        ASM,
        "=r,l,l,l,r,r,l",
        [
            xp,
            bits_ptr + slot * (D // 32),
            vals_ptr + slot * (SLOT // 2),
            n_tok - r,
            dep,
            x_ptr + x_base + r * sxt,
        ],
        dtype=gl.int32,
        is_pure=False,
        pack=1,
    )


def _ptx_ok(store: CompressedStore, rows: Tensor) -> bool:
    return _gluon_ok(store, rows) and rows.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in rows.stride()[:3])


def _launch_ptx(store: CompressedStore, rows: Tensor, keep: int, num_warps: int = _PTX_WARPS) -> None:
    n = rows.shape[2]
    x32 = rows.view(torch.int32)
    coalesced = _PTX_COALESCED and x32.stride(2) == store.head_dim // 2  # a warp's rows: one contiguous block
    words = triton.next_power_of_2(num_warps * warp_smem_bytes(store.head_dim, store.slot, coalesced) // 4)
    grid = (triton.cdiv(n, 32 * num_warps), store.batch * store.heads)
    _topk_pack_ptx_kernel[grid](
        x32,
        store.bits,
        store.vals.view(torch.int32),
        n,
        store.heads,
        *x32.stride()[:3],
        store.length,
        store.capacity,
        SLOT=store.slot,
        D=store.head_dim,
        SMEM_WORDS=words,
        ASM=make_asm(store.head_dim, keep, store.slot, _PTX_RELOAD, _PTX_ACCS, coalesced),
        num_warps=num_warps,
    )


def _gluon_ok(store: CompressedStore, rows: Tensor) -> bool:
    return (
        _GLUON
        and rows.is_cuda
        and store.fixed
        and store.dtype in (torch.float16, torch.bfloat16)
        and os.environ.get("TRITON_INTERPRET", "0") != "1"
        and rows.stride(-1) == 1
        and all(s % 2 == 0 for s in rows.stride()[:3])
        and rows.data_ptr() % 4 == 0
        and store.head_dim in (64, 128)
        and store.keep is not None
    )


def _launch_gluon(store: CompressedStore, rows: Tensor, keep: int, num_warps: int = _GL_WARPS) -> None:
    n = rows.shape[2]
    x32 = rows.view(torch.int32)  # [B, H, n, D/2]: strides in int32 units (checked even by _gluon_ok)
    grid = (triton.cdiv(n, 32 * num_warps), store.batch * store.heads)
    _topk_pack_gluon_kernel[grid](
        x32,
        store.bits,
        store.vals.view(torch.int16),
        n,
        store.heads,
        *x32.stride()[:3],
        store.length,
        store.capacity,
        KEEP=keep,
        SLOT=store.slot,
        D=store.head_dim,
        num_warps=num_warps,
    )


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


def topk_pack_triton(
    store: CompressedStore,
    rows: Tensor,
    keep: int,
    gluon: bool = True,
    gl_warps: int | None = None,
    ptx: bool = True,
    **launch,
) -> None:
    """Fused exact top-``keep`` prune and pack of ``rows`` [B, H, n, D] into ``store``.

    On the GPU (fixed layout, fp16/bf16) a one-row-per-thread kernel runs unless ``gluon=False``: the generated-PTX
    one (16-byte aligned rows, ``ptx=True``) or else the Gluon one; ``gl_warps`` is its launch width, ``launch``
    (block_r, num_warps, swar) that of the plain-Triton kernel (benchmarks)."""
    _check_triton_shape(store)
    n = rows.shape[2]
    if store.fixed:
        store.reserve(n)
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        if gluon and ptx and _ptx_ok(store, rows):
            _launch_ptx(store, rows, keep, num_warps=gl_warps or _PTX_WARPS)
        elif gluon and _gluon_ok(store, rows):
            _launch_gluon(store, rows, keep, num_warps=gl_warps or _GL_WARPS)
        else:
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
