"""Triton prune+pack: rows go straight into a :class:`CompressedStore`'s preallocated slots.

Two kernels:

* ``_prune_pack_kernel`` (plain Triton; the CPU interpreter, fp32, variable layouts, unaligned rows, word-quota
  stores), in two modes (constexpr ``TOPK``): exact per-token top-``keep`` by |x| (a bitwise binary search for the
  threshold over the integer key ``bits(x) & 0x7FFF`` (0x7FFFFFFF for fp32), which orders |x| exactly for finite
  values; entries above the threshold are kept, ties at the threshold in channel order until the row holds
  ``keep``), or a given kept pattern (any count in the variable layout). With constexpr ``WORD`` (stores made with
  ``word_quota=True``) the same search runs per 32-channel word against that word's quota, so the kernel packs the
  ``word`` rule's pattern directly, also at a static store's per-row device counts. With constexpr ``NM`` (stores
  made with ``nm_group=4``, ``8`` or ``16``) every group of ``NM`` consecutive channels keeps its top ``KEEP·NM/D``
  by rank within the group (the ``nm4``/``nm8``/``nm16`` rules' pattern; ties to the lower channel). With constexpr ``PERM``
  M (stores made with ``nm_strided=True``) the kernel reads each row's position p from column
  ``(p % M)·(D/M) + p // M`` (:func:`mustafar.formats.bitmap.stored_channels`), the given mask likewise, and then
  packs the permuted row as above: the ``nm4s``/``nm8s`` rules' pattern in the store's stored order. With
  constexpr ``ORDER`` (a store holding per-head orders, the calibrated ``nm8c``/``nm16c`` rules) position p of row (b, h) is
  read from column ``order[b, h, p]`` (the store's int32 :meth:`~CompressedStore.head_order_words`) instead.
  With constexpr ``FP8`` (``value_dtype="fp8"`` stores) the kept values go in as e4m3 codes and each token's
  power-of-two scale into ``scales`` (:mod:`mustafar.formats.fp8`).
* ``_topk_pack_ptx_kernel`` (GPU, fixed layout without fp8 codes, fp16/bf16, 16-byte aligned rows: every store a cache makes): the
  same top-k as one generated PTX program per row (:mod:`mustafar.kernels._topk_ptx`).

Destination: fixed layout ``vals[b, h, t0 + r, :]``; variable layout ``vals[b, h, offs[b, h, t0 + r]:]`` (offsets
recorded by :meth:`CompressedStore.extend`). No concatenation, no host synchronisation in the top-k fixed path.

Static stores (``CompressedStore(..., static=True)``): the top-k pack reads ``t0`` per batch row from the store's
device count (constexpr ``DEVICE_OFF``), drops rows that would land at or past ``capacity`` and then advances the
count on the device (one ``add_``), so the append is a fixed sequence of launches a CUDA graph can capture. The
given-mask pack stays host-driven (it checks the counts against ``keep``, which synchronises): not capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from mustafar.formats.bitmap import CompressedStore
from mustafar.formats.fp8 import top_exponent
from mustafar.kernels._topk_ptx import make_asm, warp_smem_bytes
from mustafar.kernels.launch import CompiledLaunch, cached_launch, raw_stream, spec_key
from mustafar.kernels.support import cdiv, gluon_capable, next_power_of_2

_BLOCK_R = 8  # rows per program; with 2 warps the best of the H100 launch sweep (results/kernels)
_NUM_WARPS = 2
_PTX_WARPS = 1  # PTX path: 32 rows per warp (one per thread); 1 warp per program is the best K+V sum on H100


@triton.jit
def _abs_key(x, KEY_BITS: tl.constexpr):
    """Integer key that orders |x| exactly (sign bit cleared from the raw bits)."""
    if KEY_BITS == 15:
        key = x.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF
    else:
        key = x.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return key


@triton.jit
def _e4m3(y):
    """fp32 ``y`` as its e4m3 bit pattern (int32), round to nearest even, finite values beyond 448 saturated to
    0x7e (as torch's conversion does), ±inf and NaN as e4m3fn's NaN 0x7f with ``y``'s sign: integer arithmetic, so
    the interpreter (whose float8 conversion does not round to nearest even) and the GPU agree with PyTorch."""
    ub = y.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    normal = (
        ub - (120 << 23) + 0x7FFFF + ((ub >> 20) & 1)
    ) >> 20  # rebias 127 -> 7, round to 3 mantissa bits
    v = y.to(tl.int32, bitcast=True)
    tiny = ub < (121 << 23)
    # below 2^-6: multiples of 2^-9 (subnormals; 8 is the smallest normal, 0x08); NaN never reaches the int cast
    t = tl.where(tiny, tl.abs(y), 0.0) * 512.0
    n = t.to(tl.int32)
    r = t - n.to(tl.float32)
    n = n + ((r > 0.5) | ((r == 0.5) & ((n & 1) == 1))).to(tl.int32)
    code = tl.where(ub >= 0x7F800000, 0x7F, tl.where(tiny, n, tl.minimum(normal, 0x7E)))  # inf's bits up: NaN
    return code | ((v >> 24) & 0x80)


@triton.jit
def _prune_pack_kernel(
    x_ptr,
    mask_ptr,
    bits_ptr,
    vals_ptr,
    offs_ptr,
    scale_ptr,
    order_ptr,
    n_tok,
    heads,
    sxb,
    sxh,
    sxt,
    smb,
    smh,
    smt,
    t0,
    len_ptr,
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
    DEVICE_OFF: tl.constexpr,
    WORD: tl.constexpr,
    FP8: tl.constexpr,
    FP8_TOP: tl.constexpr,
    NM: tl.constexpr,
    PERM: tl.constexpr,
    ORDER: tl.constexpr,
):
    pid_r = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < n_tok
    if DEVICE_OFF:
        # static store: this batch row's count on the device; rows past the capacity are dropped
        t0 = tl.load(len_ptr + b)
        rmask = rmask & (t0 + r < cap)
    c = tl.arange(0, D)
    if PERM > 0:  # a strided N:M store: position c holds channel (c % PERM)·(D/PERM) + c // PERM
        c = (c % PERM) * (D // PERM) + c // PERM
    if ORDER:  # a per-head order: position c holds channel order[b, h, c]
        c = tl.load(order_ptr + bh.to(tl.int64) * D + c)
    x_off = b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + r[:, None].to(tl.int64) * sxt + c[None, :]
    x = tl.load(x_ptr + x_off, mask=rmask[:, None], other=0.0)

    if TOPK and NM > 0:
        # per group of NM consecutive channels: keep the entries of rank < PER, where entry i's rank counts the
        # group's entries j that beat it (a larger key, or an equal one at a lower channel: nm_topk_mask's ties)
        G_NM: tl.constexpr = D // NM
        PER: tl.constexpr = KEEP * NM // D
        key = tl.reshape(_abs_key(x, KEY_BITS), [BLOCK_R, G_NM, NM])
        ki = tl.expand_dims(key, 3)  # [BLOCK_R, G_NM, NM (i), 1]
        kj = tl.expand_dims(key, 2)  # [BLOCK_R, G_NM, 1, NM (j)]
        lane = tl.arange(0, NM)
        lower = (lane[None, :] < lane[:, None])[None, None, :, :]  # j < i
        rank = tl.sum(((kj > ki) | ((kj == ki) & lower)).to(tl.int32), axis=3)
        keep = tl.reshape(rank < PER, [BLOCK_R, D])
    elif TOPK and WORD:
        # per 32-channel word g: top-q_g, q_g = KEEP // G (+1 for the first KEEP % G words), ties to the lower channel
        G: tl.constexpr = D // 32
        key = tl.reshape(_abs_key(x, KEY_BITS), [BLOCK_R, G, 32])
        g = tl.arange(0, G)
        quota = (KEEP // G + (g < KEEP % G).to(tl.int32))[None, :]
        thr = tl.zeros([BLOCK_R, G], dtype=tl.int32)
        for i in tl.static_range(KEY_BITS):
            cand = thr | (1 << (KEY_BITS - 1 - i))
            cnt = tl.sum((key >= cand[:, :, None]).to(tl.int32), axis=2)
            thr = tl.where(cnt >= quota, cand, thr)
        gt = key > thr[:, :, None]
        eq = key == thr[:, :, None]
        need = quota - tl.sum(gt.to(tl.int32), axis=2)
        tie_rank = tl.cumsum(eq.to(tl.int32), axis=2)
        keep = tl.reshape(gt | (eq & (tie_rank <= need[:, :, None])), [BLOCK_R, D])
    elif TOPK:
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
    if FP8:
        # e4m3 codes with the token's power-of-two scale (mustafar.formats.fp8.pow2_scale, same integer math)
        # over the finite kept values only (a kept ±inf does not move it); a kept NaN makes the scale 1
        xf = x.to(tl.float32)
        xb = xf.to(tl.int32, bitcast=True)
        finite = (xb & 0x7FFFFFFF) < 0x7F800000
        amax = tl.max(tl.where(keep & finite, tl.abs(xf), 0.0), axis=1)
        nan = tl.sum((keep & (xf != xf)).to(tl.int32), axis=1)
        abits = amax.to(tl.int32, bitcast=True)
        k = ((abits >> 23) & 0xFF) - 135 + ((abits & 0x7FFFFF) > 0x600000).to(tl.int32)
        k = tl.minimum(tl.maximum(tl.where((amax > 0) & (nan == 0), k, 0), -126), 126)
        tl.store(scale_ptr + slot, ((k + 127) << 23).to(tl.float32, bitcast=True), mask=rmask)
        inv = ((127 - k) << 23).to(tl.float32, bitcast=True)  # 2^-k: the division is exact
        # ±inf and NaN: the NaN code with the input's own sign (not the product's: a GPU NaN may lose it)
        code = _e4m3(xf * inv[:, None])
        # at the dtype's top scale a code above 240 would dequantise past its range: one code down (fp8.quantize)
        code = tl.where((k == FP8_TOP)[:, None] & ((code & 0x7F) > 0x77), code - 1, code)
        x = tl.where(finite, code, 0x7F | ((xb >> 24) & 0x80)).to(tl.uint8)
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
# GPU fast path: one row per thread, the whole per-row program generated PTX (``mustafar.kernels._topk_ptx``:
# byte-lane threshold search, bitmap tie order, shared-memory compaction, coalesced copy-out), run through one
# ``inline_asm_elementwise`` per thread. Gluon supplies the per-row pointers and reserves
# the shared memory (the asm addresses it from ``global_smem``: the only allocation, so it sits at offset 0; the
# one-word load of it only keeps it alive). Needs 16-byte aligned rows; otherwise ``_prune_pack_kernel`` runs.
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
    len_ptr,
    cap,
    SLOT: gl.constexpr,
    D: gl.constexpr,
    SMEM_WORDS: gl.constexpr,
    ASM: gl.constexpr,
    DEVICE_OFF: gl.constexpr,
):
    NW: gl.constexpr = gl.num_warps()
    BLOCK_R: gl.constexpr = 32 * NW
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
    pid_r = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // heads
    h = bh % heads
    r = pid_r * BLOCK_R + gl.arange(0, BLOCK_R, layout=lay)
    n_store = n_tok
    if DEVICE_OFF:
        # static store: this batch row's count on the device; rows past the capacity are neither read nor stored
        t0 = gl.load(len_ptr + b)
        n_store = gl.minimum(n_tok, cap - t0)
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
            n_store - r,
            dep,
            x_ptr + x_base + r * sxt,
        ],
        dtype=gl.int32,
        is_pure=False,
        pack=1,
    )


def _ptx_ok(store: CompressedStore, rows: Tensor) -> bool:
    """The PTX kernel's domain: a compiled sm_80+ GPU, the fixed layout without word quotas (so no N:M groups,
    strided or not) or fp8 codes, fp16/bf16, 16-byte aligned rows."""
    return (
        gluon_capable(rows.device)
        and store.fixed
        and not store.word_quota
        and not store.fp8
        and store.dtype in (torch.float16, torch.bfloat16)
        and rows.stride(-1) == 1
        and rows.data_ptr() % 16 == 0
        and all(s % 8 == 0 for s in rows.stride()[:3])
    )


def _len_arg(store: CompressedStore) -> Tensor:
    """The device count static stores are written at (any int32 tensor otherwise: never read)."""
    return store.length_tensor if store.static else store.bits


def _launch_ptx(store: CompressedStore, rows: Tensor, keep: int, t0: int, device_off: bool) -> None:
    n = rows.shape[2]
    x32 = rows.view(torch.int32)
    coalesced = x32.stride(2) == store.head_dim // 2  # a warp's rows: one contiguous block
    words = next_power_of_2(_PTX_WARPS * warp_smem_bytes(store.head_dim, store.slot, coalesced) // 4)
    grid = (cdiv(n, 32 * _PTX_WARPS), store.batch * store.heads, 1)  # three: the C launcher takes all
    constexprs = dict(
        SLOT=store.slot,
        D=store.head_dim,
        SMEM_WORDS=words,
        ASM=make_asm(store.head_dim, keep, store.slot, coalesced),
        DEVICE_OFF=device_off,
    )
    tensors = (x32, store.bits, store.vals_as(torch.int32), _len_arg(store))
    ptrs = tuple(map(Tensor.data_ptr, tensors))
    strides = x32.stride()[:3]
    key = spec_key(ptrs, (store.heads, *strides, store.capacity), (n, t0))
    launch = cached_launch(_topk_pack_ptx_kernel, constexprs, _PTX_WARPS, (), rows.device)
    stream = raw_stream(rows.device)
    if not launch.launch(
        grid, (*ptrs[:3], n, store.heads, *strides, t0, ptrs[3], store.capacity), stream, key
    ):
        launch(grid, (*tensors[:3], n, store.heads, *strides, t0, tensors[3], store.capacity), stream, key)


# (store layout, keep, rows dtype, top-k, device offset, device) -> the plain kernel's launch: its constexprs and the
# launch cache's key are built once per layout, not per call (~4 µs of the eager pack's Python)
_PLAIN: dict[tuple, CompiledLaunch] = {}


def _cached_plain_launch(
    store: CompressedStore, keep: int, dtype: torch.dtype, topk: bool, device_off: bool, device: torch.device
) -> CompiledLaunch:
    key = (store.layout_key, keep, dtype, topk, device_off, device)
    launch = _PLAIN.get(key)
    if launch is None:
        slot = store.slot if store.fixed else 1
        constexprs = dict(
            KEEP=keep,
            SLOT=slot,
            SLOT_P2=next_power_of_2(slot),
            D=store.head_dim,
            KEY_BITS=31 if store.dtype == torch.float32 else 15,
            TOPK=topk,
            VARIABLE=not store.fixed,
            BLOCK_R=_BLOCK_R,
            SWAR=store.dtype != torch.float32,
            DEVICE_OFF=device_off,
            WORD=topk and store.word_quota,
            FP8=store.fp8,
            FP8_TOP=top_exponent(dtype) if store.fp8 else 0,
            NM=store.nm_group if topk else 0,
            PERM=store.nm_group if store.nm_strided else 0,
            ORDER=store.head_order is not None,
        )
        dtypes = (dtype, store.vals.dtype)
        launch = _PLAIN[key] = cached_launch(_prune_pack_kernel, constexprs, _NUM_WARPS, dtypes, device)
    return launch


def _launch_plain(
    store: CompressedStore, rows: Tensor, mask: Tensor | None, keep: int, t0: int, device_off: bool = False
) -> None:
    """``_prune_pack_kernel``: top-``keep`` when ``mask`` is None, else the given pattern; at ``t0``, or at the
    static store's device count (``device_off``)."""
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n = rows.shape[2]
    if mask is None:
        mask_arg, m_strides = rows, (0, 0, 0)
    else:
        mask_arg = mask if mask.stride(-1) == 1 else mask.contiguous()
        mask_arg = mask_arg.view(torch.int8)
        m_strides = mask_arg.stride()[:3]
    grid = (cdiv(n, _BLOCK_R), store.batch * store.heads, 1)
    tensors = (
        rows,
        mask_arg,
        store.bits,
        store.vals,
        store.bits if store.fixed else store.offs,
        store.scales if store.fp8 else store.bits,
        store.head_order_words() if store.head_order is not None else store.bits,
        _len_arg(store),
    )
    ptrs = tuple(map(Tensor.data_ptr, tensors))
    ints = (store.heads, *rows.stride()[:3], *m_strides)
    caps = (store.capacity, store.vals.shape[2])
    key = spec_key(ptrs, (*ints, *caps), (n, t0))
    launch = _cached_plain_launch(store, keep, rows.dtype, mask is None, device_off, rows.device)
    stream = raw_stream(rows.device)
    # pointers as ints through the C launch function once compiled (no driver check per pointer, round 31); the
    # tensors themselves where Triton compiles or interprets it
    if not launch.launch(grid, (*ptrs[:7], n, *ints, t0, ptrs[7], *caps), stream, key):
        launch(grid, (*tensors[:7], n, *ints, t0, tensors[7], *caps), stream, key)


def topk_pack_triton(store: CompressedStore, rows: Tensor, keep: int) -> None:
    """Fused exact top-``keep`` prune and pack of ``rows`` [B, H, n, D] into ``store`` (inputs validated by the
    dispatcher; per-word quotas on a ``word_quota`` store, per-group counts on an ``nm_group`` one, strided groups
    in the stored order on an ``nm_strided`` one or in each head's order on a store with a :attr:`head_order`):
    the PTX kernel where it applies (none of these), the plain-Triton one elsewhere. A static store is written at
    its device count, which then advances on the device: no host synchronisation, capturable."""
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n = rows.shape[2]
    with store.rollback_on_error():
        # every token holds `keep` values: offsets are arithmetic
        t0 = 0 if store.static else store.extend(n, keep)
        if _ptx_ok(store, rows):
            _launch_ptx(store, rows, keep, t0, store.static)
        else:
            _launch_plain(store, rows, None, keep, t0, store.static)
    if store.static:
        store.advance(n)


def pack_triton(store: CompressedStore, rows: Tensor, mask: Tensor) -> None:
    """Pack ``rows`` under a given ``mask`` (both in channel order) into ``store`` (inputs validated by the
    dispatcher)."""
    with store.rollback_on_error():
        t0 = store.extend(rows.shape[2], mask.sum(-1))
        _launch_plain(store, rows, mask, store.keep or 0, t0)
