"""Fused split-K sparse decode attention over two :class:`CompressedStore` s plus a dense window (Triton).

Grid ``(B, H_kv, S + 1)``: programs ``s < S`` walk a contiguous chunk of compressed tokens, program ``S`` walks the
dense window; all use one online softmax (log2 domain). Each program serves a whole GQA group: the ``n_rep`` query
heads are padded to ``BLOCK_H >= 16`` rows so that both products are ``tl.dot`` s, and every compressed row is
decoded once per group, not once per query head. A small second kernel merges the ``S + 1`` partial results with
their log-sum-exps.

Decoding a compressed tile (:func:`_decode_tile`) avoids per-element popcounts and scans: one lane owns one 8-channel
group of one token (one bitmap byte). The group's first value index is an exclusive prefix over the token's byte
popcounts; the 8 channels then walk that index forward bit by bit (compile-time bit positions), gathering
``vals[index]`` under the bit. The 8 results are joined in-thread into a [BLOCK_N, D] tile. The variable layout is the
same code with one extra per-token offset load (constexpr ``*_VAR``).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from mustafar.formats.bitmap import CompressedStore

_LOG2E = 1.4426950408889634
_WORD_DTYPES = {8: torch.uint8, 16: torch.int16, 32: torch.int32}


# PTX for 8 channels of one lane (bits 0..7 of $8): per channel one bit test (LOP3 -> predicate), a zeroed predicated
# 16-bit load at the running address and a predicated 64-bit step of 2 bytes. GPU only (the interpreter runs the
# plain-tl twin in _expand8_v3).
_GATHER8_ASM = tl.constexpr(
    "\n".join(
        ["{", ".reg .pred p;", ".reg .b64 a, o;", ".reg .b32 t, i;", "mov.b32 i, $9;"]
        + [
            line
            for k in range(8)
            for line in (
                f"and.b32 t, $8, {1 << k};",
                "setp.ne.b32 p, t, 0;",
                "mul.wide.s32 o, i, 2;",
                "add.s64 a, $10, o;",
                f"mov.b16 ${k}, 0;",
                f"@p ld.global.b16 ${k}, [a];",
            )
            + (("@p add.s32 i, i, 1;",) if k < 7 else ())
        ]
        + ["}"]
    )
)


@triton.jit
def _popc(x, HW: tl.constexpr):
    """Popcount of an int32: the hardware instruction on GPU, SWAR in the interpreter (it has no libdevice)."""
    if HW:
        out = libdevice.popc(x)
    else:
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        out = ((u * 0x01010101) >> 24).to(tl.int32)
    return out


@triton.jit
def _gather_bit(ptr, word, J: tl.constexpr):
    bit = (word >> J) & 1
    v = tl.load(ptr, mask=bit != 0, other=0.0)
    return v, ptr + bit


@triton.jit
def _expand8(p, word, J0: tl.constexpr):
    """Channels J0..J0+7 of every group: [G, BN, 2, 2, 2], channel J0 + 4a + 2b + c at index [..., a, b, c]."""
    v0, p = _gather_bit(p, word, J0 + 0)
    v1, p = _gather_bit(p, word, J0 + 1)
    v2, p = _gather_bit(p, word, J0 + 2)
    v3, p = _gather_bit(p, word, J0 + 3)
    v4, p = _gather_bit(p, word, J0 + 4)
    v5, p = _gather_bit(p, word, J0 + 5)
    v6, p = _gather_bit(p, word, J0 + 6)
    v7, p = _gather_bit(p, word, J0 + 7)
    # join(a, b)[..., i] is a for i = 0 and b for i = 1; this nesting puts v_j at flat position j
    x = tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))
    return x, p


@triton.jit
def _bit(word, J: tl.constexpr):
    """Predicate ``bit J of word`` as one LOP3 (bit 31 is the sign)."""
    if J == 31:
        out = word < 0
    else:
        out = (word & (1 << J)) != 0
    return out


@triton.jit
def _gather_bit3(row_ptr, idx, word, J: tl.constexpr):
    bit = _bit(word, J)
    v = tl.load(row_ptr + idx, mask=bit, other=0.0)
    return v, idx + bit.to(tl.int32)


@triton.jit
def _expand8_v3(row_ptr, idx, word, ASM: tl.constexpr):
    """Channels 0..7 of ``word`` (same [G, BN, 2, 2, 2] arrangement as :func:`_expand8`), first value at the
    32-bit in-row index ``idx``.

    ``ASM`` (GPU only): the whole 8-channel walk is one inline-PTX block (bit test → predicated load and increment);
    otherwise plain tl (the interpreter path), same values.
    """
    if ASM:
        v0, v1, v2, v3, v4, v5, v6, v7 = tl.inline_asm_elementwise(
            _GATHER8_ASM,
            "=h,=h,=h,=h,=h,=h,=h,=h,r,r,l",
            [word, idx, (row_ptr + tl.zeros_like(idx)).to(tl.int64, bitcast=True)],
            dtype=(row_ptr.dtype.element_ty,) * 8,
            is_pure=True,
            pack=1,
        )
    else:
        v0, idx = _gather_bit3(row_ptr, idx, word, 0)
        v1, idx = _gather_bit3(row_ptr, idx, word, 1)
        v2, idx = _gather_bit3(row_ptr, idx, word, 2)
        v3, idx = _gather_bit3(row_ptr, idx, word, 3)
        v4, idx = _gather_bit3(row_ptr, idx, word, 4)
        v5, idx = _gather_bit3(row_ptr, idx, word, 5)
        v6, idx = _gather_bit3(row_ptr, idx, word, 6)
        v7, idx = _gather_bit3(row_ptr, idx, word, 7)
    x = tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))
    return x


@triton.jit
def _decode_tile(
    bits_ptr,
    vals_ptr,
    offs_ptr,
    row,
    val_row,
    tok,
    tmask,
    gstride,
    D: tl.constexpr,
    SLOT: tl.constexpr,
    VAR: tl.constexpr,
    GROUP: tl.constexpr,
    HW: tl.constexpr,
    V3: tl.constexpr,
    ASM: tl.constexpr,
):
    """Dense [BLOCK_N, D] tile of compressed tokens ``tok`` of one (batch, head) row; zeros where masked.

    ``bits_ptr`` views the bitmap as GROUP-bit words (uint8 / int16 / int32). Tiles are [G, BLOCK_N] with the
    group index fastest so the lanes of a warp share a token's value row (few cache lines per gather).
    ``V3``: one 64-bit row pointer per program and 32-bit in-row value indices advanced by the kept bit
    (predicate), instead of a 64-bit pointer per lane stepped by an extracted bit.
    """
    G: tl.constexpr = D // GROUP
    g = tl.arange(0, G)
    if V3:
        bits_row = bits_ptr + row * G
        word = tl.load(bits_row + tok[None, :] * G + g[:, None] * gstride, mask=tmask[None, :], other=0)
    else:
        slot = row + tok
        word = tl.load(bits_ptr + slot[None, :] * G + g[:, None] * gstride, mask=tmask[None, :], other=0)
    word = word.to(tl.int32)
    if GROUP == 16:
        word = word & 0xFFFF
    elif GROUP == 8:
        word = word & 0xFF
    cnt = _popc(word, HW)
    first = tl.cumsum(cnt, axis=0) - cnt
    if V3:
        if VAR:
            row_ptr = vals_ptr + val_row
            base = tl.load(offs_ptr + row + tok, mask=tmask, other=0)
        else:
            row_ptr = vals_ptr + row * SLOT
            base = tok * SLOT
        idx = base[None, :] + first
        x = _expand8_v3(row_ptr, idx, word, ASM)
        if GROUP >= 16:
            y = _expand8_v3(row_ptr, idx + _popc(word & 0xFF, HW), word >> 8, ASM)
            x = tl.permute(tl.join(x, y), (0, 1, 5, 2, 3, 4))
        if GROUP == 32:
            y0 = _expand8_v3(row_ptr, idx + _popc(word & 0xFFFF, HW), word >> 16, ASM)
            y1 = _expand8_v3(row_ptr, idx + _popc(word & 0xFFFFFF, HW), word >> 24, ASM)
            y = tl.permute(tl.join(y0, y1), (0, 1, 5, 2, 3, 4))
            x = tl.permute(tl.join(x, y), (0, 1, 6, 2, 3, 4, 5))
    else:
        if VAR:
            base = val_row + tl.load(offs_ptr + slot, mask=tmask, other=0)
        else:
            base = slot * SLOT
        p = vals_ptr + base[None, :] + first
        x, p = _expand8(p, word, 0)
        if GROUP >= 16:
            y, p = _expand8(p, word, 8)
            x = tl.permute(tl.join(x, y), (0, 1, 5, 2, 3, 4))
        if GROUP == 32:
            y0, p = _expand8(p, word, 16)
            y1, p = _expand8(p, word, 24)
            y = tl.permute(tl.join(y0, y1), (0, 1, 5, 2, 3, 4))
            x = tl.permute(tl.join(x, y), (0, 1, 6, 2, 3, 4, 5))
    if GROUP == 8:
        x = tl.permute(x, (1, 0, 2, 3, 4))
    elif GROUP == 16:
        x = tl.permute(x, (1, 0, 2, 3, 4, 5))
    else:
        x = tl.permute(x, (1, 0, 2, 3, 4, 5, 6))
    return tl.reshape(x, [tok.shape[0], D])


@triton.jit
def _prefetch(base, nbytes, NL: tl.constexpr, L1: tl.constexpr):
    """Prefetch the 128-byte lines of ``base[0:nbytes]`` (bytes; at most NL lines; GPU only) into L2, or into L1
    with ``L1``. The addresses are clamped into the region (duplicates are harmless)."""
    line = tl.minimum(tl.arange(0, NL) * 128, tl.maximum(nbytes - 1, 0))
    ptr = (base.to(tl.pointer_type(tl.int8)) + line).to(tl.int64, bitcast=True)
    if L1:
        asm: tl.constexpr = "prefetch.global.L1 [$1];\nmov.u32 $0, 0;"
    else:
        asm: tl.constexpr = "prefetch.global.L2 [$1];\nmov.u32 $0, 0;"
    tl.inline_asm_elementwise(asm, "=r,l", [ptr], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _dot(a, b, F32: tl.constexpr):
    """fp16/bf16 tensor-core dot with fp32 accumulation, or an exact fp32 dot (fp32 inputs; bf16 under the
    interpreter, whose bf16 tl.dot is wrong in Triton 3.6)."""
    if F32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _scores(q, k, valid, m_i, l_i, acc, qk_scale, F32: tl.constexpr):
    """First half of an online-softmax step: probabilities of one tile, running max/sum and the rescaled
    accumulator (V is decoded only after this, so the K and V tiles are never live together)."""
    s = _dot(q, tl.trans(k), F32)
    s = tl.where(valid[None, :], s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    return p, m_new, l_i, acc * alpha[:, None]


@triton.jit(do_not_specialize=["gstride", "num_splits"])
def _sparse_decode_kernel(
    q_ptr,
    k_bits,
    k_vals,
    k_offs,
    v_bits,
    v_vals,
    v_offs,
    kw_ptr,
    vw_ptr,
    o_ptr,
    lse_ptr,
    sqb,
    sqh,
    skwb,
    skwh,
    skwt,
    svwb,
    svwh,
    svwt,
    heads_kv,
    T,
    W,
    k_cap,
    v_cap,
    k_vcap,
    v_vcap,
    tokens_per_split,
    num_splits,
    qk_scale,
    gstride,
    N_REP: tl.constexpr,
    D: tl.constexpr,
    K_SLOT: tl.constexpr,
    V_SLOT: tl.constexpr,
    K_VAR: tl.constexpr,
    V_VAR: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    F32: tl.constexpr,
    GROUP: tl.constexpr,
    HW: tl.constexpr,
    V3: tl.constexpr,
    ASM: tl.constexpr,
    PREFETCH: tl.constexpr,
    PF_L1: tl.constexpr,
    NL_VALS: tl.constexpr,
    NL_BITS: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    hq = h * N_REP + tl.arange(0, BLOCK_H)
    hmask = tl.arange(0, BLOCK_H) < N_REP
    d = tl.arange(0, D)
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + hq[:, None] * sqh + d[None, :], mask=hmask[:, None], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, D], dtype=tl.float32)
    bh = b.to(tl.int64) * heads_kv + h
    start = s * tokens_per_split
    end = tl.minimum(start + tokens_per_split, T)
    for t0 in range(start, end, BLOCK_N):
        if PREFETCH > 0:
            # the gathers below are two dependent memory round trips (bitmap word, then value lines): start
            # PREFETCH tiles ahead so that both hit a cache by the time they are decoded (fixed layout only)
            p0 = t0 + PREFETCH * BLOCK_N
            n_tok = tl.minimum(end - p0, BLOCK_N)
            if n_tok > 0:
                _prefetch(k_vals + (bh * k_cap + p0) * K_SLOT, n_tok * K_SLOT * 2, NL_VALS, PF_L1)
                _prefetch(v_vals + (bh * v_cap + p0) * V_SLOT, n_tok * V_SLOT * 2, NL_VALS, PF_L1)
                _prefetch(k_bits + (bh * k_cap + p0) * (D // GROUP), n_tok * (D // 8), NL_BITS, PF_L1)
                _prefetch(v_bits + (bh * v_cap + p0) * (D // GROUP), n_tok * (D // 8), NL_BITS, PF_L1)
        tok = t0 + tl.arange(0, BLOCK_N)
        valid = tok < end
        k = _decode_tile(
            k_bits,
            k_vals,
            k_offs,
            bh * k_cap,
            bh * k_vcap,
            tok,
            valid,
            gstride,
            D,
            K_SLOT,
            K_VAR,
            GROUP,
            HW,
            V3,
            ASM,
        )
        p, m_i, l_i, acc = _scores(q, k, valid, m_i, l_i, acc, qk_scale, F32)
        v = _decode_tile(
            v_bits,
            v_vals,
            v_offs,
            bh * v_cap,
            bh * v_vcap,
            tok,
            valid,
            gstride,
            D,
            V_SLOT,
            V_VAR,
            GROUP,
            HW,
            V3,
            ASM,
        )
        acc += _dot(p.to(v.dtype), v, F32)
    if s == num_splits - 1:
        # the dense window rides on the last split: no extra program per (batch, head) in the grid
        kw_row = kw_ptr + b.to(tl.int64) * skwb + h.to(tl.int64) * skwh
        vw_row = vw_ptr + b.to(tl.int64) * svwb + h.to(tl.int64) * svwh
        for t0 in range(0, W, BLOCK_N):
            tok = t0 + tl.arange(0, BLOCK_N)
            valid = tok < W
            k = tl.load(kw_row + tok[:, None] * skwt + d[None, :], mask=valid[:, None], other=0.0)
            p, m_i, l_i, acc = _scores(q, k, valid, m_i, l_i, acc, qk_scale, F32)
            v = tl.load(vw_row + tok[:, None] * svwt + d[None, :], mask=valid[:, None], other=0.0)
            acc += _dot(p.to(v.dtype), v, F32)

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(l_i > 0, m_i + tl.log2(l_safe), float("-inf"))
    row = (b.to(tl.int64) * heads_kv * N_REP + hq) * num_splits + s
    tl.store(o_ptr + row[:, None] * D + d[None, :], out, mask=hmask[:, None])
    tl.store(lse_ptr + row, lse, mask=hmask)


@triton.jit(do_not_specialize=["splits"])
def _merge_kernel(o_ptr, lse_ptr, out_ptr, splits, SPLITS_P2: tl.constexpr, D: tl.constexpr):
    """out[row] = Σ_s 2^(lse_s − M) · o_s / Σ_s 2^(lse_s − M) for one (batch, query head) row."""
    row = tl.program_id(0).to(tl.int64)
    sp = tl.arange(0, SPLITS_P2)
    d = tl.arange(0, D)
    lse = tl.load(lse_ptr + row * splits + sp, mask=sp < splits, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))
    o = tl.load(o_ptr + (row * splits + sp)[:, None] * D + d[None, :], mask=(sp < splits)[:, None], other=0.0)
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + row * D + d, out.to(out_ptr.dtype.element_ty))


def _empty(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Scratch allocation (a seam the tests use to poison every buffer the kernels must overwrite)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _arg(t: Tensor) -> Tensor:
    """Empty buffers have no device address; hand the launcher a one-element stand-in (never read)."""
    return t if t.numel() else torch.zeros(1, dtype=t.dtype, device=t.device)


# Resident programs per SM of each compiled launch configuration, read off the compiled kernel after its first
# launch (registers and shared memory); until then an estimate from ``maxnreg`` or the round-3 kernel's 2.
_OCCUPANCY: dict[tuple, int] = {}
_SPLIT_OVERHEAD_TILES = 1.0
_MAX_BLOCKS_PER_SM = 32  # resident thread blocks per SM (sm_80/sm_90): binds one-warp programs
_SMEM_PER_BLOCK_RESERVED = 1024  # shared memory the system reserves per resident block (sm_80/sm_90)  # a program's fixed cost (q load, partial store, ramp) in units of one token tile


def _programs_per_sm(kernel, num_warps: int, device: torch.device) -> int | None:
    """Resident programs per SM of a compiled kernel: the driver's occupancy calculator, else an estimate from its
    registers and shared memory (None where Triton does not say). One program too many in the wave model doubles
    the time of a one-wave launch (round 5: B 8 / 16K ran 1.5x slower on a 1-KB miscount), hence the driver."""
    smem = getattr(getattr(kernel, "metadata", None), "shared", 0) or 0
    exact = _driver_occupancy(getattr(kernel, "function", None), 32 * num_warps, smem)
    if exact:
        return exact
    regs = getattr(kernel, "n_regs", None)
    if not regs:
        return None
    props = torch.cuda.get_device_properties(device)
    return occupancy_estimate(
        regs,
        num_warps,
        smem,
        props.regs_per_multiprocessor,
        props.shared_memory_per_multiprocessor,
        props.max_threads_per_multi_processor,
    )


def occupancy_estimate(
    regs: int, num_warps: int, smem: int, regs_per_sm: int, smem_per_sm: int, threads_per_sm: int
) -> int:
    """Resident programs per SM from registers per thread and shared bytes per program (sm_80/sm_90 rules)."""
    regs_per_warp = math.ceil(regs * 32 / 256) * 256  # allocation unit: 256 registers per warp
    by_regs = regs_per_sm // (regs_per_warp * num_warps)
    by_smem = smem_per_sm // (smem + _SMEM_PER_BLOCK_RESERVED) if smem else by_regs
    by_warps = threads_per_sm // (32 * num_warps)
    return max(1, min(by_regs, by_smem, by_warps, _MAX_BLOCKS_PER_SM))


def _driver_occupancy(function: int | None, threads: int, dynamic_smem: int) -> int | None:
    """``cuOccupancyMaxActiveBlocksPerMultiprocessor`` through the driver library (None where unavailable)."""
    if not function:
        return None
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    blocks = ctypes.c_int(0)
    rc = cuda.cuOccupancyMaxActiveBlocksPerMultiprocessor(
        ctypes.byref(blocks), ctypes.c_void_p(function), ctypes.c_int(threads), ctypes.c_size_t(dynamic_smem)
    )
    return blocks.value if rc == 0 and blocks.value > 0 else None


def default_splits(
    batch: int, heads_kv: int, tokens: int, block_n: int, device: torch.device, programs_per_sm: int = 2
) -> int:
    """Split count minimising a wave model of the launch.

    Every program of a split count ``S`` runs ``ceil(tiles / S)`` token tiles plus a fixed overhead, and the
    ``batch · heads_kv · S`` programs run in waves of ``SMs · programs_per_sm``; the time is waves × program
    length. This avoids the round-3 heuristic's partial last wave (B 8, 16K: 2.4 waves, ~20 % idle).
    """
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return _wave_model_splits(batch * heads_kv, triton.cdiv(tokens, block_n), sms * programs_per_sm)


@functools.lru_cache(maxsize=4096)
def _wave_model_splits(programs_per_split: int, tiles: int, slots: int) -> int:
    best, best_cost = 1, math.inf
    for per in sorted({triton.cdiv(tiles, s) for s in range(1, tiles + 1)}, reverse=True):
        splits = triton.cdiv(tiles, per)
        cost = triton.cdiv(programs_per_split * splits, slots) * (per + _SPLIT_OVERHEAD_TILES)
        if cost < best_cost - 1e-9:
            best, best_cost = splits, cost
    return best


def _compile_options(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    block_n: int,
    num_warps: int,
    num_stages: int,
    group: int,
    version: int,
    prefetch: int,
    prefetch_l1: bool,
    maxnreg: int | None,
) -> tuple[dict, dict, tuple]:
    """Constexprs, launch options and the occupancy-cache key of one launch configuration."""
    if version not in (2, 3, 4, 5, 6):
        raise ValueError(f"version must be one of 2..6, got {version}")
    if group not in _WORD_DTYPES:
        raise ValueError(f"group must be one of {tuple(_WORD_DTYPES)}, got {group}")
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    d = q.shape[-1]
    n_rep = q.shape[1] // k_store.heads
    constexprs = dict(
        N_REP=n_rep,
        D=d,
        K_SLOT=k_store.slot,
        V_SLOT=v_store.slot,
        K_VAR=not k_store.fixed,
        V_VAR=not v_store.fixed,
        BLOCK_H=max(16, triton.next_power_of_2(n_rep)),
        BLOCK_N=block_n,
        F32=q.dtype == torch.float32 or (interpreting and q.dtype == torch.bfloat16),
        GROUP=group,
        HW=not interpreting,
        V3=version >= 3,
        ASM=version >= 3 and not interpreting and q.dtype != torch.float32,
        PREFETCH=prefetch if (version >= 3 and not interpreting and k_store.fixed and v_store.fixed) else 0,
        PF_L1=prefetch_l1,
        NL_VALS=triton.next_power_of_2(triton.cdiv(block_n * max(k_store.slot, v_store.slot) * 2, 128)),
        NL_BITS=triton.next_power_of_2(triton.cdiv(block_n * d // 8, 128)),
    )
    launch = dict(num_warps=num_warps, num_stages=num_stages)
    if maxnreg is not None and not interpreting:
        launch["maxnreg"] = maxnreg
    return constexprs, launch, (q.device, q.dtype, version, *constexprs.values(), *launch.values())


def planned_splits(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
    group: int = 32,
    version: int | None = None,
    prefetch: int = 2,
    prefetch_l1: bool = False,
    maxnreg: int | None = None,
) -> int:
    """The split count a launch with these options uses when ``num_splits`` is not given: the wave model at the
    configuration's occupancy (measured once it has been launched, estimated before)."""
    version, block_n, num_warps = resolve_launch(q, k_store, v_store, version, block_n, num_warps)
    *_, key = _compile_options(
        q, k_store, v_store, block_n, num_warps, num_stages, group, version, prefetch, prefetch_l1, maxnreg
    )
    return _splits_at(key, q, k_store, block_n, num_warps, maxnreg)


# (block_n, num_warps) per decoder version: the H100 sweeps' best at B >= 8 (results/kernels/NOTES.md, round 5)
_DEFAULT_LAUNCH = {2: (64, 4), 3: (64, 4), 4: (64, 4), 5: (32, 1), 6: (16, 1)}


def resolve_launch(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    version: int | None,
    block_n: int | None,
    num_warps: int | None,
) -> tuple[int, int, int]:
    """Decoder version and tile/warp counts of a launch: the staged Gluon decoder (v6, one warp per program) where
    it applies, the Triton v3 decoder elsewhere; explicit options win."""
    if version is None:
        version = 6 if _gluon_decode_ok(q, k_store, v_store, q.shape[1] // k_store.heads) else 3
    dn, dw = _DEFAULT_LAUNCH.get(version, (64, 4))
    return version, block_n or dn, num_warps or dw


def _splits_at(
    key: tuple, q: Tensor, k_store: CompressedStore, block_n: int, num_warps: int, maxnreg: int | None
) -> int:
    guess = 65536 // (maxnreg * 32 * num_warps) if maxnreg else 2
    per_sm = _OCCUPANCY.get(key, max(1, guess))
    return default_splits(q.shape[0], k_store.heads, k_store.length, block_n, q.device, per_sm)


def sparse_decode_triton(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    k_window: Tensor,
    v_window: Tensor,
    scale: float,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
    group: int = 32,
    version: int | None = None,
    prefetch: int = 2,
    prefetch_l1: bool = False,
    maxnreg: int | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Launch the fused split-K kernel and the merge; inputs already validated by the dispatcher.

    ``group`` (8, 16 or 32) is how many channels one lane decodes: bitmap word width of the decoder.
    ``version`` (default: :func:`resolve_launch`, i.e. 6 where the Gluon decoders apply, else 3) and the
    ``block_n`` / ``num_warps`` defaults are the H100 sweeps' best (results/kernels/NOTES.md). 6: Gluon, one warp
    per program, tiles staged in shared memory by cp.async and decoded from there, tokens on the MMA M side
    (:mod:`mustafar.kernels.decode_staged`); 5: Gluon, v3's run decode from global memory and an explicit swizzled
    shared round trip; 3: Triton, 32-bit in-row value indices, one independent index chain per 8 channels, and on
    the GPU (fp16/bf16) an inline-PTX 8-channel gather; 4: the Gluon decoder that gathers into the MMA operand
    registers (measured slower, :mod:`mustafar.kernels.decode_gluon`); 2: the round-1 decoder, for comparison.
    Inputs outside the Gluon decoders' domain (CPU interpreter, variable layouts, fp32) run version 3.
    ``prefetch`` (version 3, GPU, fixed layouts): prefetch of the bitmaps and value rows this many tiles ahead,
    into L2 (or L1 with ``prefetch_l1``). ``maxnreg`` caps registers per thread (more resident programs per SM).
    ``num_splits`` defaults to :func:`default_splits` at the configuration's measured occupancy.
    """
    b, hq, d = q.shape
    hkv = k_store.heads
    t = k_store.length
    version, block_n, num_warps = resolve_launch(q, k_store, v_store, version, block_n, num_warps)
    constexprs, launch, key = _compile_options(
        q, k_store, v_store, block_n, num_warps, num_stages, group, version, prefetch, prefetch_l1, maxnreg
    )
    if num_splits is None:
        num_splits = _splits_at(key, q, k_store, block_n, num_warps, maxnreg)
    tokens_per_split = triton.cdiv(triton.cdiv(max(t, 1), num_splits), block_n) * block_n
    o_part = _empty((b, hq, num_splits, d), torch.float32, q.device)
    lse_part = _empty((b, hq, num_splits), torch.float32, q.device)
    out = _empty(q.shape, q.dtype, q.device) if out is None else out
    if version == 6 and _gluon_decode_ok(q, k_store, v_store, n_rep=hq // hkv):
        kernel = _launch_staged(
            q,
            k_store,
            v_store,
            k_window,
            v_window,
            o_part,
            lse_part,
            tokens_per_split,
            num_splits,
            scale,
            block_n,
        )
    elif version in (4, 5) and _gluon_decode_ok(q, k_store, v_store, n_rep=hq // hkv):
        kernel = _launch_gluon(
            q,
            k_store,
            v_store,
            k_window,
            v_window,
            o_part,
            lse_part,
            tokens_per_split,
            num_splits,
            scale,
            block_n,
            num_warps,
            runs=version == 5,
        )
    else:
        kernel = _launch_triton(
            q,
            k_store,
            v_store,
            k_window,
            v_window,
            o_part,
            lse_part,
            tokens_per_split,
            num_splits,
            scale,
            group,
            constexprs,
            launch,
        )
    if key not in _OCCUPANCY and q.device.type == "cuda":
        occ = _programs_per_sm(kernel, num_warps, q.device)
        if occ is not None:
            _OCCUPANCY[key] = occ
    _merge_kernel[(b * hq,)](
        o_part, lse_part, out, num_splits, SPLITS_P2=triton.next_power_of_2(num_splits), D=d
    )
    return out


def _gluon_decode_ok(q: Tensor, k_store: CompressedStore, v_store: CompressedStore, n_rep: int) -> bool:
    """The Gluon decoder's domain: GPU, fixed layouts, fp16/bf16, head_dim 64/128, a GQA group of <= 16 heads."""
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return (
        not interpreting
        and q.is_cuda
        and k_store.fixed
        and v_store.fixed
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] in (64, 128)
        and n_rep <= 16
    )


def _gluon_args(
    q,
    k_store,
    v_store,
    k_window,
    v_window,
    o_part,
    lse_part,
    tokens_per_split,
    num_splits,
    scale,
    vals_dtype=None,
) -> tuple:
    """Positional arguments the Gluon decoders share (the staged one reads the value slots as int32 words)."""
    vals = (
        (k_store.vals, v_store.vals)
        if vals_dtype is None
        else (k_store.vals.view(vals_dtype), v_store.vals.view(vals_dtype))
    )
    return (
        q,
        _arg(k_store.bits.view(torch.int32)),
        _arg(vals[0]),
        _arg(v_store.bits.view(torch.int32)),
        _arg(vals[1]),
        _arg(k_window),
        _arg(v_window),
        o_part,
        lse_part,
        q.stride(0),
        q.stride(1),
        *k_window.stride()[:3],
        *v_window.stride()[:3],
        k_store.heads,
        k_store.length,
        k_window.shape[2],
        k_store.capacity,
        v_store.capacity,
        tokens_per_split,
        num_splits,
        scale * _LOG2E,
    )


def _launch_gluon(
    q,
    k_store,
    v_store,
    k_window,
    v_window,
    o_part,
    lse_part,
    tokens_per_split,
    num_splits,
    scale,
    block_n,
    num_warps,
    runs,
):
    from mustafar.kernels.decode_gluon import _gl_sparse_decode_kernel, operand_layouts

    b, hq, d = q.shape
    hkv = k_store.heads
    lk, lv = operand_layouts(d, block_n, num_warps)
    return _gl_sparse_decode_kernel[(b, hkv, num_splits)](
        *_gluon_args(
            q, k_store, v_store, k_window, v_window, o_part, lse_part, tokens_per_split, num_splits, scale
        ),
        N_REP=hq // hkv,
        D=d,
        K_SLOT=k_store.slot,
        V_SLOT=v_store.slot,
        BLOCK_H=16,
        BLOCK_N=block_n,
        L2K=lk,
        L2V=lv,
        RUNS=runs,
        NL_VALS=triton.next_power_of_2(triton.cdiv(block_n * max(k_store.slot, v_store.slot) * 2, 128)),
        num_warps=num_warps,
    )


def _launch_staged(
    q, k_store, v_store, k_window, v_window, o_part, lse_part, tokens_per_split, num_splits, scale, block_n
):
    from mustafar.kernels.decode_staged import _st_sparse_decode_kernel

    b, hq, d = q.shape
    hkv = k_store.heads
    n_rep = hq // hkv
    stage_bytes = block_n * (d // 4 + 2 * (k_store.slot + v_store.slot))
    return _st_sparse_decode_kernel[(b, hkv, num_splits)](
        *_gluon_args(
            q,
            k_store,
            v_store,
            k_window,
            v_window,
            o_part,
            lse_part,
            tokens_per_split,
            num_splits,
            scale,
            torch.int32,
        ),
        N_REP=n_rep,
        D=d,
        K_SLOT=k_store.slot,
        V_SLOT=v_store.slot,
        BLOCK_H=max(8, triton.next_power_of_2(n_rep)),
        BLOCK_N=block_n,
        SMEM_WORDS=triton.next_power_of_2((2 * block_n * d * 2 + 2 * stage_bytes) // 4),
        K_CH_P2=triton.next_power_of_2(block_n * k_store.slot // 8),
        V_CH_P2=triton.next_power_of_2(block_n * v_store.slot // 8),
        num_warps=1,
    )


def _launch_triton(
    q,
    k_store,
    v_store,
    k_window,
    v_window,
    o_part,
    lse_part,
    tokens_per_split,
    num_splits,
    scale,
    group,
    constexprs,
    launch,
):
    b, hq, d = q.shape
    hkv = k_store.heads
    t, w = k_store.length, k_window.shape[2]
    k_offs = k_store.bits if k_store.fixed else k_store.offs
    v_offs = v_store.bits if v_store.fixed else v_store.offs
    return _sparse_decode_kernel[(b, hkv, num_splits)](
        q,
        _arg(k_store.bits.view(_WORD_DTYPES[group])),
        _arg(k_store.vals),
        _arg(k_offs),
        _arg(v_store.bits.view(_WORD_DTYPES[group])),
        _arg(v_store.vals),
        _arg(v_offs),
        _arg(k_window),
        _arg(v_window),
        o_part,
        lse_part,
        q.stride(0),
        q.stride(1),
        *k_window.stride()[:3],
        *v_window.stride()[:3],
        hkv,
        t,
        w,
        k_store.capacity,
        v_store.capacity,
        k_store.vals.shape[2] if not k_store.fixed else 0,
        v_store.vals.shape[2] if not v_store.fixed else 0,
        tokens_per_split,
        num_splits,
        scale * _LOG2E,
        1,
        **constexprs,
        **launch,
    )
