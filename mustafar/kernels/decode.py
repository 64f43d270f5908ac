"""Fused split-K sparse decode attention over two :class:`CompressedStore` s plus a dense window: the split plan,
the portable (plain-Triton) decoder, the LSE merge, and the launch of either decoder.

Grid ``(B, H_kv, S)``: program ``s`` walks a contiguous chunk of compressed tokens, and the last split also walks the
dense window; all use one online softmax (log2 domain). Each program serves a whole GQA group (the ``n_rep`` query
heads padded for the MMA), so every compressed row is decoded once per group, not once per query head. A small
second kernel merges the ``S`` partial results with their log-sum-exps. Two decoders share this scheme:

* **staged** (:mod:`mustafar.kernels.decode_staged`, Gluon, GPU only): the default where it applies (chosen by
  :func:`mustafar.kernels.dispatch.decoder_for`);
* **portable** (``_sparse_decode_kernel`` here, plain Triton: the CPU interpreter, fp32, variable layouts, large
  GQA groups). One lane owns one 32-channel bitmap word of one token; the word's first value index is an exclusive
  prefix over the token's word popcounts, then four 8-channel chains walk their index forward bit by bit
  (compile-time bit positions), gathering ``vals[index]`` under the bit (on the GPU one inline-PTX block per chain).
  The results are joined in-thread into a [BLOCK_N, D] tile. The variable layout is the same code with one extra
  per-token offset load (constexpr ``*_VAR``).

Launch knobs are not part of the public op: :func:`_launch` picks the tile size and warps per decoder
(``_DEFAULT_LAUNCH``) and the split count from a wave model at the compiled kernel's occupancy; benchmarks and
tests override them through :func:`_launch` only.

Static stores (``CompressedStore(..., static=True)``): both decoders take the stores' device-side counts
(``k_len``/``v_len``, constexpr ``DEVICE_LEN``) and clamp them to ``T``, which is then the capacity the plan was
made for; a split whose range starts at or past the length writes an empty partial (lse = -inf, o = 0) that the
merge weighs by zero. Everything a launch needs besides the data is cached per shape (:class:`_Config`, the split
plan, the partials, the compiled kernels behind :class:`CompiledLaunch`), so an eager call costs two C-level
launches plus a few dict lookups; a call replays the previous call's launches (:class:`_Plan`) while nothing they
depend on changed, both in one C call (:mod:`mustafar.kernels.launch_seq`; on dynamic stores with the length patched
in).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice
from triton.language.extra.cuda import gdc_wait

from mustafar.formats.bitmap import CompressedStore
from mustafar.kernels.decode_scatter import _sc_sparse_decode_kernel
from mustafar.kernels.decode_staged import _st_sparse_decode_kernel
from mustafar.kernels.launch import CompiledLaunch, cached_launch, hooked, length_spec, spec_key
from mustafar.kernels.launch_seq import LaunchSequence, pack_launch
from mustafar.kernels.scatter_ptx import (
    SELECTOR_TABLE_BYTES,
    TOKENS_PER_TILE,
    expand8_frag_asm,
    expand16_frag_asm,
    expand_asm,
    expands_values,
    key_group,
    scatter_asm,
    score_asm,
    swizzled_slots,
    value_group,
)
from mustafar.kernels.support import cdiv, interpreting, next_power_of_2, pdl_capable

_LOG = logging.getLogger(__name__)
_LOG2E = 1.4426950408889634
DECODERS = ("scatter", "staged", "portable")


# PTX for 8 channels of one lane (bits 0..7 of $8): per channel one bit test (LOP3 -> predicate), a zeroed predicated
# 16-bit load at the running address and a predicated 64-bit step of 2 bytes. GPU only (the interpreter runs the
# plain-tl twin in _expand8).
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
def _bit(word, J: tl.constexpr):
    """Predicate ``bit J of word`` as one LOP3 (bit 31 is the sign)."""
    if J == 31:
        out = word < 0
    else:
        out = (word & (1 << J)) != 0
    return out


@triton.jit
def _gather_bit(row_ptr, idx, word, J: tl.constexpr):
    bit = _bit(word, J)
    v = tl.load(row_ptr + idx, mask=bit, other=0)
    return v, idx + bit.to(tl.int32)


@triton.jit
def _expand8(row_ptr, idx, word, ASM: tl.constexpr):
    """Channels 0..7 of ``word`` of every (word, token) lane, first value at the 32-bit in-row index ``idx``:
    [G, BN, 2, 2, 2], channel 4a + 2b + c at index [..., a, b, c].

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
        v0, idx = _gather_bit(row_ptr, idx, word, 0)
        v1, idx = _gather_bit(row_ptr, idx, word, 1)
        v2, idx = _gather_bit(row_ptr, idx, word, 2)
        v3, idx = _gather_bit(row_ptr, idx, word, 3)
        v4, idx = _gather_bit(row_ptr, idx, word, 4)
        v5, idx = _gather_bit(row_ptr, idx, word, 5)
        v6, idx = _gather_bit(row_ptr, idx, word, 6)
        v7, idx = _gather_bit(row_ptr, idx, word, 7)
    # join(a, b)[..., i] is a for i = 0 and b for i = 1; this nesting puts v_j at flat position j
    x = tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))
    return x


@triton.jit
def _e4m3_to_f32(c):
    """e4m3fn bit patterns (uint8) as fp32, by bit arithmetic (exact; the interpreter has no fp8 conversion);
    0x7f/0xff are NaN (the packs store NaN and ±inf so), as the GPU's conversion reads them."""
    c = c.to(tl.int32)
    e = (c >> 3) & 0xF
    m = c & 7
    normal = ((c & 0x80) << 24) | ((e + 120) << 23) | (m << 20)
    sub = m.to(tl.float32) * 0.001953125  # exponent field 0: m · 2^-9
    value = tl.where(e == 0, tl.where((c & 0x80) != 0, -sub, sub), normal.to(tl.float32, bitcast=True))
    return tl.where((c & 0x7F) == 0x7F, float("nan"), value)


@triton.jit
def _decode_tile(
    bits_ptr,
    vals_ptr,
    offs_ptr,
    scale_ptr,
    row,
    val_row,
    tok,
    tmask,
    gstride,
    D: tl.constexpr,
    SLOT: tl.constexpr,
    VAR: tl.constexpr,
    HW: tl.constexpr,
    ASM: tl.constexpr,
    FP8: tl.constexpr,
):
    """Dense [BLOCK_N, D] tile of compressed tokens ``tok`` of one (batch, head) row; zeros where masked (fp32
    with ``FP8``: the codes decoded and multiplied by their token's scale, exact in the model's dtype).

    Tiles are [G, BLOCK_N] (G = D/32 words) with the word index fastest so the lanes of a warp share a token's value
    row (few cache lines per gather). One 64-bit row pointer per program, 32-bit in-row value indices advanced by
    the kept bit (a predicate). ``gstride`` is always 1 but opaque to the compiler (a runtime, unspecialised
    argument): proven-contiguous words would be loaded vectorised and change the tile layout (offline PTX: fewer
    shuffles, different shared-memory traffic; never measured), so it stays.
    """
    G: tl.constexpr = D // 32
    g = tl.arange(0, G)
    bits_row = bits_ptr + row * G
    word = tl.load(bits_row + tok[None, :] * G + g[:, None] * gstride, mask=tmask[None, :], other=0)
    cnt = _popc(word, HW)
    first = tl.cumsum(cnt, axis=0) - cnt
    if VAR:
        row_ptr = vals_ptr + val_row
        base = tl.load(offs_ptr + row + tok, mask=tmask, other=0)
    else:
        row_ptr = vals_ptr + row * SLOT
        base = tok * SLOT
    idx = base[None, :] + first
    x = _expand8(row_ptr, idx, word, ASM)
    y = _expand8(row_ptr, idx + _popc(word & 0xFF, HW), word >> 8, ASM)
    x = tl.permute(tl.join(x, y), (0, 1, 5, 2, 3, 4))
    y0 = _expand8(row_ptr, idx + _popc(word & 0xFFFF, HW), word >> 16, ASM)
    y1 = _expand8(row_ptr, idx + _popc(word & 0xFFFFFF, HW), word >> 24, ASM)
    y = tl.permute(tl.join(y0, y1), (0, 1, 5, 2, 3, 4))
    x = tl.permute(tl.join(x, y), (0, 1, 6, 2, 3, 4, 5))
    x = tl.permute(x, (1, 0, 2, 3, 4, 5, 6))
    x = tl.reshape(x, [tok.shape[0], D])
    if FP8:
        x = _e4m3_to_f32(x) * tl.load(scale_ptr + row + tok, mask=tmask, other=0.0)[:, None]
    return x


@triton.jit
def _prefetch(base, nbytes, NL: tl.constexpr):
    """Prefetch the 128-byte lines of ``base[0:nbytes]`` (bytes; at most NL lines; GPU only) into L2. The addresses
    are clamped into the region (duplicates are harmless)."""
    line = tl.minimum(tl.arange(0, NL) * 128, tl.maximum(nbytes - 1, 0))
    ptr = (base.to(tl.pointer_type(tl.int8)) + line).to(tl.int64, bitcast=True)
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
    k_scales,
    v_scales,
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
    k_len,
    v_len,
    W_WIN,
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
    K_FP8: tl.constexpr,
    V_FP8: tl.constexpr,
    K_VB: tl.constexpr,
    V_VB: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    F32: tl.constexpr,
    HW: tl.constexpr,
    ASM: tl.constexpr,
    PREFETCH: tl.constexpr,
    NL_VALS: tl.constexpr,
    NL_BITS: tl.constexpr,
    DEVICE_LEN: tl.constexpr,
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
    if DEVICE_LEN:
        # static stores: this batch row's token count on the device; T is the capacity the plan was made for
        T = tl.minimum(tl.minimum(tl.load(k_len + b), tl.load(v_len + b)), T)
    start = s * tokens_per_split
    end = tl.minimum(start + tokens_per_split, T)
    for t0 in range(start, end, BLOCK_N):
        if PREFETCH > 0:
            # the gathers below are two dependent memory round trips (bitmap word, then value lines): start
            # PREFETCH tiles ahead so that both hit a cache by the time they are decoded (fixed layout only)
            p0 = t0 + PREFETCH * BLOCK_N
            n_tok = tl.minimum(end - p0, BLOCK_N)
            if n_tok > 0:
                _prefetch(k_vals + (bh * k_cap + p0) * K_SLOT, n_tok * K_SLOT * K_VB, NL_VALS)
                _prefetch(v_vals + (bh * v_cap + p0) * V_SLOT, n_tok * V_SLOT * V_VB, NL_VALS)
                _prefetch(k_bits + (bh * k_cap + p0) * (D // 32), n_tok * (D // 8), NL_BITS)
                _prefetch(v_bits + (bh * v_cap + p0) * (D // 32), n_tok * (D // 8), NL_BITS)
        tok = t0 + tl.arange(0, BLOCK_N)
        valid = tok < end
        k = _decode_tile(
            k_bits, k_vals, k_offs, k_scales, bh * k_cap, bh * k_vcap, tok, valid, gstride, D, K_SLOT, K_VAR, HW,
            ASM and not K_FP8, K_FP8,
        ).to(q.dtype)  # fmt: skip
        p, m_i, l_i, acc = _scores(q, k, valid, m_i, l_i, acc, qk_scale, F32)
        v = _decode_tile(
            v_bits, v_vals, v_offs, v_scales, bh * v_cap, bh * v_vcap, tok, valid, gstride, D, V_SLOT, V_VAR, HW,
            ASM and not V_FP8, V_FP8,
        ).to(q.dtype)  # fmt: skip
        acc += _dot(p.to(v.dtype), v, F32)
    if s == num_splits - 1:
        # the dense window rides on the last split: no extra program per (batch, head) in the grid
        kw_row = kw_ptr + b.to(tl.int64) * skwb + h.to(tl.int64) * skwh
        vw_row = vw_ptr + b.to(tl.int64) * svwb + h.to(tl.int64) * svwh
        for t0 in range(0, W_WIN, BLOCK_N):
            tok = t0 + tl.arange(0, BLOCK_N)
            valid = tok < W_WIN
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
def _merge_kernel(
    o_ptr, lse_ptr, out_ptr, splits, SPLITS_P2: tl.constexpr, D: tl.constexpr, PDL: tl.constexpr
):
    """out[row] = Σ_s 2^(lse_s − M) · o_s / Σ_s 2^(lse_s − M) for one (batch, query head) row. ``PDL``: launched
    as a programmatic dependent of the decoder (:func:`_merge_launch`), it waits here for the decoder's grid to
    complete and its partials to be visible."""
    if PDL:
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    sp = tl.arange(0, SPLITS_P2)
    d = tl.arange(0, D)
    lse = tl.load(lse_ptr + row * splits + sp, mask=sp < splits, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))
    o = tl.load(o_ptr + (row * splits + sp)[:, None] * D + d[None, :], mask=(sp < splits)[:, None], other=0.0)
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + row * D + d, out.to(out_ptr.dtype.element_ty))


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Scratch allocation (a seam the tests use to poison every buffer the kernels must overwrite)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _output(q: Tensor) -> Tensor:
    """The op's output, contiguous like ``q`` (a seam like :func:`_empty`). ``empty_like`` parses no keyword
    arguments: 1.5 µs less host time per call than ``torch.empty(shape, dtype=, device=)``; a ``q`` of another
    layout gets a contiguous buffer, which the merge writes row by row."""
    if q.is_contiguous():
        return torch.empty_like(q)
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


# ---------------------------------------------------------------------------------------------------------------------
# Split plan: a wave model at the compiled kernel's occupancy
# ---------------------------------------------------------------------------------------------------------------------

# Resident programs per SM of each compiled launch configuration, read off the compiled kernel after its first
# launch; until then the round-3 kernel's 2.
_OCCUPANCY: dict[tuple, int] = {}
_SPLIT_OVERHEAD_TILES = 1.0  # a program's fixed cost (q load, partial store, ramp) in units of one token tile
_MAX_BLOCKS_PER_SM = 32  # resident thread blocks per SM (sm_80/sm_90): binds one-warp programs
_SMEM_PER_BLOCK_RESERVED = 1024  # shared memory the system reserves per resident block (sm_80/sm_90)


def _programs_per_sm(kernel: object, num_warps: int, device: torch.device) -> int | None:
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
    sms = _sm_count(device.index) if device.type == "cuda" else 4
    return _wave_model_splits(batch * heads_kv, cdiv(tokens, block_n), sms * programs_per_sm)


@functools.cache
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=4096)
def _wave_model_splits(programs_per_split: int, tiles: int, slots: int) -> int:
    best, best_cost = 1, math.inf
    for per in sorted({cdiv(tiles, s) for s in range(1, tiles + 1)}, reverse=True):
        splits = cdiv(tiles, per)
        cost = cdiv(programs_per_split * splits, slots) * (per + _SPLIT_OVERHEAD_TILES)
        if cost < best_cost - 1e-9:
            best, best_cost = splits, cost
    return best


# ---------------------------------------------------------------------------------------------------------------------
# Launch configuration, cached per shape
# ---------------------------------------------------------------------------------------------------------------------

# (block_n, num_warps) per decoder: the H100 sweeps' best at B >= 8 (results/kernels/NOTES.md, rounds 4-5)
_DEFAULT_LAUNCH = {"scatter": (32, 1), "staged": (16, 1), "portable": (64, 4)}
# the scatter decoder's ring depth in sides (2 or 3: the kernel rotates the slots of those); None: _scatter_plan's choice
SCATTER_SIDES: int | None = None


def _staged_constexprs(q: Tensor, k_store: CompressedStore, v_store: CompressedStore, block_n: int) -> dict:
    d = q.shape[-1]
    n_rep = q.shape[1] // k_store.heads
    stage_bytes = block_n * (d // 4 + 2 * (k_store.slot + v_store.slot))
    return dict(
        N_REP=n_rep,
        D=d,
        K_SLOT=k_store.slot,
        V_SLOT=v_store.slot,
        BLOCK_H=max(8, next_power_of_2(n_rep)),
        BLOCK_N=block_n,
        SMEM_WORDS=next_power_of_2((2 * block_n * d * 2 + 2 * stage_bytes) // 4),
        K_CH_P2=next_power_of_2(block_n * k_store.slot // 8),
        V_CH_P2=next_power_of_2(block_n * v_store.slot // 8),
        DEVICE_LEN=k_store.static,
        PDL=pdl_capable(q.device),
    )


def _slot_bytes(store: CompressedStore) -> int:
    return store.slot * store.vals.element_size()


def _scatter_plan(
    k_store: CompressedStore, v_store: CompressedStore, side: int, n_rep: int
) -> tuple[int, int]:
    """(register cap, sides in the staging ring) of the scatter decoder for these stores, ``side``-byte staged
    sides and GQA groups of ``n_rep`` query heads.

    Registers are what bound its resident warps: each scheduler's quarter of the register file holds two warps at
    the 200-224 registers ptxas settles on and three at 168 (results/kernels/NOTES.md, round 10: the H200 A/B).
    168 costs some spilling; where the values are few (fp16/bf16 slots of at most 20 registers: s >= 0.69 at D 128,
    s >= 0.5 at D 64; every fp8 store, whose codes are loaded and widened chunk by chunk) the third warp
    wins (3-6 % at D 128), where they are many (fp16 s 0.5) it loses 23-65 % and the cap stays at 224: not
    the spills (about 5 % of the L1 traffic) but lost instruction-level parallelism, each warp stalling twice as
    long on shared-memory results while shared memory admits one program more per SM, not four (Nsight
    Compute, NOTES round 13). The ring keeps three sides (round 7) except for fp16/bf16 values at 168 registers
    with sides of 3 KB or more: two sides in flight per warp already cover the latency, and the smaller footprint leaves L1 room
    for the spills (fp16 s 0.7: 3 % faster than three). fp8 stores keep three (two spill more at s 0.5, 372 against
    240 bytes, and ran 8 % slower; equal at s 0.7). Groups of more than 4 query heads (Qwen2-7B's 7) hold twice
    the query pairs per lane and spill 220-384 bytes at 168 (offline sm_90): they keep 224 until measured.
    V stores whose rows are expanded (:func:`expands_values`) hold no scatter chains: at 168 registers and two
    sides (12 programs per SM) they run 4-5 % faster than at 224 / three sides (8), three sides at 168 (9, shared
    memory binds) 12-19 % slower (H200 A/B, NOTES round 15)."""
    fp8 = k_store.fp8 or v_store.fp8
    if expands_values(v_store) and n_rep <= 4:
        return 168, SCATTER_SIDES or 2
    few_values = (k_store.fp8 or _slot_bytes(k_store) <= 80) and (v_store.fp8 or _slot_bytes(v_store) <= 80)
    if not few_values or n_rep > 4:
        return 224, SCATTER_SIDES or 3
    return 168, SCATTER_SIDES or (2 if side >= 3072 and not fp8 else 3)


def _scatter_ring(tile: int, side: int, sides: int, extra: int = 0) -> int:
    """Shared words of the staging ring's allocation: exactly ``sides`` sides (rounding it to a power of two, 16 KB
    for the 9 KB ring at D 128 s 0.7, cost resident programs once registers allowed more: round 10) and ``extra``
    bytes after them (the fp8 key selector table), 256 bytes more where it would tie with the ``tile``-byte dense
    tile's (the kernel places the larger allocation first; sides are whole multiples of 256 bytes, which keeps the
    second allocation aligned)."""
    words = (sides * side + extra) // 4
    return words + 64 * (words == tile // 4)


def _staged_stride(slot_bytes: int, chunk: int) -> int:
    """Shared-memory bytes between two staged tokens' value slots: the slot, plus one chunk when the slot is an even
    number of chunks. Each lane loads its own token's slot in ``chunk``-byte vectors; an odd stride in chunks walks
    the 32 lanes over every bank group, an even one folds them onto a few (a 128-byte slot puts all 32 lanes on the
    same four banks: 32-way conflicts per load, where 4 wavefronts suffice). Slots that fill whole 128-byte rows
    (whole 128-byte slots, or 32- and 64-byte ones) are swizzled instead
    (:func:`mustafar.kernels.scatter_ptx.swizzled_slots`): no padding."""
    if swizzled_slots(slot_bytes, chunk):
        return slot_bytes
    return slot_bytes + chunk if (slot_bytes // chunk) % 2 == 0 else slot_bytes


KEY16_PAD = 8  # bytes added to the staged stride of sides read as MMA fragments at D 128 (:func:`_scatter_constexprs`)
# the value dtypes whose values kept 2:4 go straight into the P·V MMA's operand (movmatrix) instead of a row tile
# (5:16 values, fp8 codes only, always do). Measured per dtype (results/kernels/scatter_h200/run13/ab/): fp8 codes
# 11-15 % faster (their expansion is table lookups either way, and the tile's stores and ldmatrix go); 16-bit
# values 4-6 % slower (the operand needs the selectors computed per pair, which outweighs the tile), so they keep
# the tile
VALUES_IN_OPERAND: frozenset[str] = frozenset({"fp8"})


def _scatter_constexprs(q: Tensor, k_store: CompressedStore, v_store: CompressedStore, block_n: int) -> dict:
    """One dense tile, a ring of staged sides (:func:`_scatter_plan`, :func:`_scatter_ring`: each side's words,
    value slots and, fp8, its scales) and the scatter PTX of each side; in the kernel's declaration order."""
    d = q.shape[-1]
    n_rep = q.shape[1] // k_store.heads
    k_sb, v_sb = _slot_bytes(k_store), _slot_bytes(v_store)
    k_ck, v_ck = (16 if sb % 16 == 0 else 8 for sb in (k_sb, v_sb))
    k_sp, v_sp = _staged_stride(k_sb, k_ck), _staged_stride(v_sb, v_ck)
    v_nm, k_nm = value_group(v_store), key_group(k_store, v_store)
    # values into the P·V operand, no tile
    v_op = v_nm == 16 or (v_nm > 0 and v_store.value_dtype in VALUES_IN_OPERAND)
    # sides read in the MMA fragment's pattern (5:16 keys; values into the operand): the eight tokens of one load
    # read four groups' words each, which a stride of 10 words (D 128) folds onto shared banks; 12 spread them
    if k_nm == 16 and (k_sp // 4) % 8 == 2:
        k_sp += KEY16_PAD
    if v_op and (v_sp // 4) % 8 == 2:
        v_sp += KEY16_PAD
    fp8 = k_store.fp8 or v_store.fp8
    slot_bytes = block_n * (d // 8 + max(k_sp, v_sp) + (4 if fp8 else 0))
    sides = _scatter_plan(k_store, v_store, slot_bytes, n_rep)[1]
    # scattered fp8: an e4m3 tile; values into the operand: none
    tile = 0 if v_op else block_n * d * (1 if v_store.fp8 and not v_nm else 2)
    table = (k_nm and k_store.fp8) or v_nm == 16 or (v_op and v_store.fp8)  # fp8 selectors, after the ring
    words = _scatter_ring(tile, slot_bytes, sides, SELECTOR_TABLE_BYTES if table else 0)
    return dict(
        N_REP=n_rep,
        D=d,
        K_SB=k_sb,
        V_SB=v_sb,
        K_SP=k_sp,
        V_SP=v_sp,
        K_CK=k_ck,
        V_CK=v_ck,
        K_FP8=k_store.fp8,
        V_FP8=v_store.fp8,
        BLOCK_H=max(8, next_power_of_2(n_rep)),
        BLOCK_N=block_n,
        SMEM_WORDS=words,
        K_CH_P2=next_power_of_2(block_n * k_sb // k_ck),
        V_CH_P2=next_power_of_2(block_n * v_sb // v_ck),
        DEVICE_LEN=k_store.static,
        K_ASM=(
            expand16_frag_asm()
            if k_nm == 16
            else expand8_frag_asm(k_store.fp8)
            if k_nm
            else score_asm(d, k_store.keep, k_store.slot, n_rep, q.dtype == torch.bfloat16, k_store.fp8)
        ),
        V_ASM=(
            expand16_frag_asm(transposed=True)
            if v_op and v_nm == 16
            else expand8_frag_asm(v_store.fp8, transposed=True)
            if v_op
            else expand_asm(d, v_store.slot, v_store.fp8)
            if v_nm
            else scatter_asm(d, v_store.keep, v_store.slot, v_store.fp8)
        ),
        SIDES=sides,
        SLOT_BYTES=slot_bytes,
        V_NM=v_nm,
        K_NM=k_nm,
        K_PERM=k_store.nm_group if k_nm and k_store.nm_strided else 0,
        K_ORDER=bool(k_nm) and k_store.head_order is not None,
        V_OP=v_op,
        PDL=pdl_capable(q.device),
    )


def _portable_constexprs(q: Tensor, k_store: CompressedStore, v_store: CompressedStore, block_n: int) -> dict:
    interp = interpreting()
    d = q.shape[-1]
    n_rep = q.shape[1] // k_store.heads
    return dict(
        N_REP=n_rep,
        D=d,
        K_SLOT=k_store.slot,
        V_SLOT=v_store.slot,
        K_VAR=not k_store.fixed,
        V_VAR=not v_store.fixed,
        K_FP8=k_store.fp8,
        V_FP8=v_store.fp8,
        K_VB=k_store.vals.element_size(),
        V_VB=v_store.vals.element_size(),
        BLOCK_H=max(16, next_power_of_2(n_rep)),
        BLOCK_N=block_n,
        F32=q.dtype == torch.float32 or (interp and q.dtype == torch.bfloat16),
        HW=not interp,
        ASM=not interp and q.dtype != torch.float32,
        # prefetch of the bitmaps and value rows 2 tiles ahead into L2 (fixed layouts, GPU)
        PREFETCH=2 if (not interp and k_store.fixed and v_store.fixed) else 0,
        NL_VALS=next_power_of_2(cdiv(block_n * max(_slot_bytes(k_store), _slot_bytes(v_store)), 128)),
        NL_BITS=next_power_of_2(cdiv(block_n * d // 8, 128)),
        DEVICE_LEN=k_store.static,
    )


@dataclass(frozen=True)
class _Config:
    """One launch configuration: what depends on the shapes, dtypes and layouts but not on the data or length."""

    decoder: str
    block_n: int
    num_warps: int
    constexprs: dict
    occupancy_key: tuple
    launcher: CompiledLaunch
    on_gpu: bool
    # the split merge's launch per split count (a per-call key build and lookup cost ~2 µs of host time)
    merges: dict = field(default_factory=dict, compare=False)

    def merge(self, splits: int, d: int, dtype: torch.dtype, device: torch.device) -> CompiledLaunch:
        """The merge's launch for ``splits`` (compiled per split count rounded up to a power of two)."""
        launch = self.merges.get(splits)
        if launch is None:
            launch = self.merges[splits] = _merge_launch(next_power_of_2(splits), d, dtype, device)
        return launch


# per module load: the tests reload this module to switch between the interpreter and compiled kernels
_CONFIGS: dict[tuple, _Config] = {}


def _configure(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    decoder: str,
    block_n: int | None,
    num_warps: int | None,
) -> _Config:
    """The (cached) launch configuration of these inputs: tile size, warps, constexprs, occupancy-cache key."""
    key = (q.device, q.dtype, q.shape[1], q.shape[2], k_store.layout_key, v_store.layout_key, decoder, block_n,
           num_warps)  # fmt: skip
    cfg = _CONFIGS.get(key)
    if cfg is None:
        cfg = _CONFIGS[key] = _new_config(q, k_store, v_store, decoder, block_n, num_warps)
    return cfg


def _new_config(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    decoder: str,
    block_n: int | None,
    num_warps: int | None,
) -> _Config:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    staged = decoder in ("staged", "scatter")
    if staged and num_warps not in (None, 1):
        raise ValueError(f"the {decoder} decoder runs one warp per program, got num_warps={num_warps}")
    if decoder == "scatter" and block_n not in (None, TOKENS_PER_TILE):
        raise ValueError(f"the scatter decoder walks {TOKENS_PER_TILE}-token tiles, got block_n={block_n}")
    dn, dw = _DEFAULT_LAUNCH[decoder]
    block_n, num_warps = block_n or dn, num_warps or dw
    make = {"scatter": _scatter_constexprs, "staged": _staged_constexprs, "portable": _portable_constexprs}
    constexprs = make[decoder](q, k_store, v_store, block_n)
    # the occupancy key leaves DEVICE_LEN out: one load more does not change what fits on an SM
    occ = (q.device, q.dtype, decoder, num_warps, *(v for k, v in constexprs.items() if k != "DEVICE_LEN"))
    options = dict(num_warps=1) if staged else dict(num_warps=num_warps, num_stages=2)
    if decoder == "scatter":
        options["maxnreg"] = _scatter_plan(k_store, v_store, constexprs["SLOT_BYTES"], constexprs["N_REP"])[0]
    kernel = {
        "scatter": _sc_sparse_decode_kernel,
        "staged": _st_sparse_decode_kernel,
        "portable": _sparse_decode_kernel,
    }[decoder]
    launcher = CompiledLaunch(kernel, constexprs, options)
    return _Config(decoder, block_n, num_warps, constexprs, occ, launcher, q.device.type == "cuda")


def _planned_splits(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    decoder: str,
    block_n: int | None = None,
    num_warps: int | None = None,
) -> int:
    """The split count :func:`_launch` uses when none is given: the wave model at the configuration's occupancy
    (measured once it has been launched, 2 programs per SM before), over the tokens held (dynamic stores) or the
    capacity (static stores)."""
    cfg = _configure(q, k_store, v_store, decoder, block_n, num_warps)
    return _splits_at(cfg, q, _plan_tokens(k_store, v_store))


def _plan_tokens(k_store: CompressedStore, v_store: CompressedStore) -> int:
    """Tokens the split plan covers: the length of dynamic stores, the capacity of static ones (one plan for every
    length up to it, so one launch a CUDA graph can replay)."""
    return min(k_store.capacity, v_store.capacity) if k_store.static else k_store.length


def _splits_at(cfg: _Config, q: Tensor, tokens: int) -> int:
    per_sm = _OCCUPANCY.get(cfg.occupancy_key, 2)
    return default_splits(
        q.shape[0], q.shape[1] // cfg.constexprs["N_REP"], tokens, cfg.block_n, q.device, per_sm
    )


@functools.lru_cache(maxsize=4096)
def _split_plan(rows: int, tokens: int, block_n: int, slots: int, splits: int | None) -> tuple[int, int]:
    """(num_splits, tokens_per_split): the wave model's split count unless ``splits`` is given, and the tokens
    of each split rounded up to whole tiles."""
    if splits is None:
        splits = _wave_model_splits(rows, cdiv(tokens, block_n), slots)
    return splits, cdiv(cdiv(max(tokens, 1), splits), block_n) * block_n


def _partials(
    b: int, hq: int, splits: int, d: int, device: torch.device, stream: int
) -> tuple[Tensor, Tensor]:
    """The split partials (o [B, H_q, S, D], lse [B, H_q, S], fp32), allocated once per shape and CUDA stream:
    every launch overwrites all of them, and launches on one stream run in order (a graph captured on its own
    stream gets its own)."""
    key = (device, stream, b, hq, splits, d)
    bufs = _PARTIALS.get(key)
    if bufs is None:
        bufs = _PARTIALS[key] = (
            _empty((b, hq, splits, d), torch.float32, device),
            _empty((b, hq, splits), torch.float32, device),
        )
    return bufs


_PARTIALS: dict[tuple, tuple[Tensor, Tensor]] = {}
_DUMMIES: dict[tuple, Tensor] = {}


def _merge_launch(splits_p2: int, d: int, dtype: torch.dtype, device: torch.device) -> CompiledLaunch:
    """The split merge's launch; on sm_90+ a programmatic dependent of the decoder, whose launch then overlaps the
    decoder's tail (the Gluon decoders let it start past their token loops)."""
    pdl = pdl_capable(device)
    return cached_launch(_merge_kernel, dict(SPLITS_P2=splits_p2, D=d, PDL=pdl), 4, (dtype,), device, pdl)


def _arg(t: Tensor) -> Tensor:
    """Empty buffers have no device address; hand the launcher a one-element stand-in (never read; one per device
    and dtype, so no per-call allocation)."""
    if t.numel():
        return t
    key = (t.device, t.dtype)
    dummy = _DUMMIES.get(key)
    if dummy is None:
        dummy = _DUMMIES[key] = torch.zeros(1, dtype=t.dtype, device=t.device)
    return dummy


def _launch(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    k_window: Tensor,
    v_window: Tensor,
    scale: float,
    decoder: str,
    out: Tensor | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
) -> Tensor:
    """Private launch of one decoder and the merge, knobs exposed (inputs validated and ``decoder`` chosen by
    :func:`mustafar.kernels.dispatch.sparse_decode_attention`, the public op; benchmarks and tests sweep here).

    ``block_n`` / ``num_warps`` default to ``_DEFAULT_LAUNCH``; ``num_splits`` to :func:`_planned_splits`. Static
    stores: the plan covers their capacity and the kernels read the length on the device (no host value of it is
    needed), so the same launch serves every length; a CUDA graph can capture it after one eager warm-up call (the
    first launch compiles and measures the occupancy the plan uses).
    """
    cfg = _configure(q, k_store, v_store, decoder, block_n, num_warps)
    return _run(cfg, q, k_store, v_store, k_window, v_window, scale, out, num_splits)


# (device, q dtype, query heads, K and V layout keys) -> the public op's configuration (its decoder chosen and
# checked by the dispatcher). Per module load, like _CONFIGS: Triton fixes whether a kernel is interpreted when it
# is defined, so the interpreter setting is this module's, and the key needs no per-call read of the environment
_PUBLIC_CONFIGS: dict[tuple, _Config] = {}


def _run(
    cfg: _Config,
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    k_window: Tensor,
    v_window: Tensor,
    scale: float,
    out: Tensor | None = None,
    num_splits: int | None = None,
    keep_plan: bool = False,
) -> Tensor:
    """:func:`_launch` under a configuration already chosen. Per call: cached lookups, the output (unless given)
    and two launches through their C launch functions, pointers passed as ints; no other allocation, no
    synchronisation. This is the eager op's host time (results/kernels/NOTES.md, round 30)."""
    b, hq, d = q.shape
    device = q.device
    hkv = k_store.heads
    k_bits, v_bits = k_store.bits, v_store.bits
    k_cap, v_cap = k_bits.shape[2], v_bits.shape[2]
    static = k_store.static
    tokens = min(k_cap, v_cap) if static else k_store.length
    slots = (_sm_count(device.index) if cfg.on_gpu else 4) * _OCCUPANCY.get(cfg.occupancy_key, 2)
    num_splits, tokens_per_split = _split_plan(b * hkv, tokens, cfg.block_n, slots, num_splits)
    # launch.raw_stream inlined: on this hot path the call costs ~0.5 µs of host time (project machine)
    stream = torch._C._cuda_getCurrentRawStream(device.index) if cfg.on_gpu else 0
    o_part, lse_part = _partials(b, hq, num_splits, d, device, stream)
    if out is None:
        out = _output(q)
    decoder = cfg.decoder
    # the staged decoders stage value slots as int32 words; the portable one reads them as stored
    if decoder == "portable":
        k_vals, v_vals = k_store.vals, v_store.vals
    else:
        k_vals, v_vals = k_store.vals_as(torch.int32), v_store.vals_as(torch.int32)
    if not (k_cap and v_cap):  # empty buffers have no address: stand-ins (never read)
        k_bits, v_bits, k_vals, v_vals = _arg(k_bits), _arg(v_bits), _arg(k_vals), _arg(v_vals)
    k_len, v_len = (k_store.length_tensor, v_store.length_tensor) if static else (k_bits, k_bits)
    w = k_window.shape[2]
    kw, vw = (k_window, v_window) if w else (_arg(k_window), _arg(v_window))
    qs, ks, vs = q.stride(), k_window.stride(), v_window.stride()
    strides = (qs[0], qs[1], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2], hkv)
    if decoder == "portable":
        k_offs = k_bits if k_store.keep is not None else _arg(k_store.offs)
        v_offs = v_bits if v_store.keep is not None else _arg(v_store.offs)
        caps = (
            w, k_cap, v_cap,
            0 if k_store.keep is not None else k_vals.shape[-1],
            0 if v_store.keep is not None else v_vals.shape[-1],
        )  # fmt: skip
        k_sc = k_store.scales if k_store.fp8 else k_bits
        v_sc = v_store.scales if v_store.fp8 else k_bits
        tensors = (
            q, k_bits, k_vals, k_offs, v_bits, v_vals, v_offs, _arg(k_sc), _arg(v_sc), kw, vw, o_part, lse_part,
            k_len, v_len,
        )  # fmt: skip
        tail = (*caps, tokens_per_split, num_splits, scale * _LOG2E, 1)
    else:
        if decoder == "scatter":  # int32 views of the fp8 scales and K's per-head order (else stand-ins)
            k_sc = _arg(k_store.scale_words()) if k_store.fp8 else k_bits
            v_sc = _arg(v_store.scale_words()) if v_store.fp8 else k_bits
            k_ord = k_store.head_order_words() if k_store.head_order is not None else k_bits
            extra = (k_sc, v_sc, k_ord)
        else:
            extra = ()
        tensors = (q, k_bits, k_vals, v_bits, v_vals, *extra, kw, vw, o_part, lse_part, k_len, v_len)
        caps = (w, k_cap, v_cap)
        tail = (*caps, tokens_per_split, num_splits, scale * _LOG2E)
    ptrs = tuple(map(Tensor.data_ptr, tensors))
    key = spec_key(ptrs, (*strides, *caps, num_splits), (tokens, tokens_per_split))
    grid = (b, hkv, num_splits)
    # the arguments: the tensors but the two length pointers, strides and tokens, the lengths, the tail; pointers
    # as ints on a cached kernel, the tensors themselves where Triton compiles (or interprets) it
    args = (*ptrs[:-2], *strides, tokens, *ptrs[-2:], *tail)
    direct = cfg.launcher.launch(grid, args, stream, key)
    if not direct:
        kernel = cfg.launcher(grid, (*tensors[:-2], *strides, tokens, *tensors[-2:], *tail), stream, key)
        if cfg.on_gpu and cfg.occupancy_key not in _OCCUPANCY:
            occ = _programs_per_sm(kernel, cfg.num_warps, device)
            if occ is not None:
                _OCCUPANCY[cfg.occupancy_key] = occ
    merge = cfg.merge(num_splits, d, q.dtype, device)
    out_ptr = out.data_ptr()
    merge_key = (out_ptr % 16 == 0, num_splits == 1)
    merge_grid = (b * hq, 1, 1)
    if not merge.launch(merge_grid, (ptrs[-4], ptrs[-3], out_ptr, num_splits), stream, merge_key):
        merge(merge_grid, (o_part, lse_part, out, num_splits), stream, merge_key)
    elif (
        keep_plan
        and direct
        and key[0] is True
        and merge_key[0]
        and (static or k_store.fixed and v_store.fixed)
    ):
        at = len(tensors) - 6  # the windows' place: (..., kw, vw, o_part, lse_part, k_len, v_len)
        merge_args = (ptrs[-4], ptrs[-3], num_splits)
        if static:  # one launch for every length: both launches in one C call
            seq = _sequence(
                cfg.launcher, key, grid, args, at, merge, merge_key, merge_grid, merge_args, cfg.on_gpu
            )
            grow = None
        else:  # the length moves the tokens and each split's share: their places in the arguments after the windows
            tok_at = len(ptrs) - 2 - (at + 2) + len(strides)
            seq, grow = None, (b * hkv, cfg.block_n, slots, tok_at, tok_at + 3 + len(caps), {})
        k_store.launch_plan = _Plan(
            _TOKEN, _signature(q, k_store, v_store, k_window, v_window, scale, stream), device, cfg.launcher,
            grid, args[1:at], args[at + 2 :], key, merge, merge_grid, merge_key, merge_args,
            (*_buffers(k_store), *_buffers(v_store), v_store, *tensors[1:at], *tensors[at + 2 :]), seq, grow,
        )  # fmt: skip
    return out


def _buffers(store: CompressedStore) -> tuple:
    """The store buffers a plan's signature holds the ids of: the plan keeps them alive, so that a grown store's new
    buffers cannot take a freed one's id (the launch may hold stand-ins or views instead, round 31's review)."""
    return store.bits, store.vals, store.__dict__.get("scales")


# whether replayed plans launch through one C call (launch_seq.LaunchSequence); benchmarks switch it off to compare
LAUNCH_SEQUENCES = True
# (launcher, key) pairs whose sequence could not be built or checked: not retried
_NO_SEQUENCE: set[tuple] = set()


def _sequence(
    launcher: CompiledLaunch,
    key: tuple,
    grid: tuple,
    args: tuple,
    at: int,
    merge: CompiledLaunch,
    merge_key: tuple,
    merge_grid: tuple,
    merge_args: tuple,
    on_gpu: bool,
    lengths: tuple[int, ...] = (),
) -> LaunchSequence | None:
    """The plan's decoder and merge as one :class:`LaunchSequence` whose inputs are the addresses of q, the two
    windows and the output, then the decoder arguments at ``lengths`` (a dynamic store's tokens and each split's
    share); None (the plan keeps the two C launches) where it is off, the kernel is not compiled, or the sequence
    cannot be built or the driver disagrees with its packing (said once per kernel)."""
    if not (LAUNCH_SEQUENCES and on_gpu) or (launcher, key) in _NO_SEQUENCE:
        return None
    inputs = {0: 0, at: 1, at + 1: 2} | {pos: 4 + i for i, pos in enumerate(lengths)}
    try:
        return LaunchSequence(
            [
                pack_launch(launcher.kernels[key], grid, (*args, *launcher.tail), inputs),
                pack_launch(
                    merge.kernels[merge_key],
                    merge_grid,
                    (merge_args[0], merge_args[1], 0, merge_args[2], *merge.tail),
                    {2: 3},
                ),
            ],
            4 + len(lengths),
        )
    except (AttributeError, KeyError, RuntimeError, ValueError) as err:
        _NO_SEQUENCE.add((launcher, key))
        _LOG.warning("mustafar: decode launches stay on Triton's launcher (%s)", err)
        return None


# this module load's token: a plan made by an earlier load of the module (the tests reload it) is never replayed
_TOKEN = object()


@dataclass(slots=True)
class _Plan:
    """A public-op call's two direct launches, kept on its K store (``CompressedStore.launch_plan``) and replayed by
    :func:`_replay` while the next call's :func:`_signature` is the same: the launch arguments then differ only in
    the addresses of ``q``, the windows and the output, and, on dynamic stores, in the length and each split's
    share (``grow``; the full path's length checks are repeated). Every other check the op makes reads only what the
    signature holds or what a store fixes at construction, so a replayed call skips them too; this halves the eager
    op's Python (round 30). ``refs`` keeps the tensors behind the cached addresses and the store buffers behind the
    signature's ids alive (:func:`_buffers`)."""

    owner: object
    sig: tuple
    device: torch.device
    launcher: CompiledLaunch
    grid: tuple
    before: tuple  # decoder arguments between q and the windows
    after: tuple  # decoder arguments after the windows
    key: tuple
    merge: CompiledLaunch
    merge_grid: tuple
    merge_key: tuple
    merge_args: tuple  # the partials' addresses and the split count
    refs: tuple
    seq: (
        LaunchSequence | None
    )  # static stores: both launches in one C call (inputs: q, the windows, the output)
    # dynamic stores: (rows, block_n, slots) of the split plan, the places of the tokens and each split's share in
    # ``after``, and the launch sequences per specialisation of those two (built on first use); None when static
    grow: tuple | None

    def __deepcopy__(self, memo: dict) -> None:
        """A copied store holds its own buffers, so the plan never applies to it (and compiled launches do not
        copy): the copy starts without one."""
        return None

    def __reduce__(self) -> tuple:
        return type(None), ()  # pickled, likewise: None


def _signature(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    kw: Tensor,
    vw: Tensor,
    scale: float,
    stream: int,
) -> tuple:
    """Everything a call's launch on static stores (and the op's checks) depends on besides the addresses of q, the
    windows and the output: the V store, every store buffer, whether each holds a per-head order, the shapes,
    strides and dtypes of q and the windows, the scale and the stream. (A static store's length lives on the
    device, a dynamic one's is checked and patched in by :func:`_replay`; the rest of a store is fixed at
    construction.)"""
    return (
        id(v_store), id(k_store.bits), id(k_store.vals), id(v_store.bits), id(v_store.vals),
        id(k_store.__dict__.get("scales")), id(v_store.__dict__.get("scales")),
        k_store._head_order is None, v_store._head_order is None,
        q.shape, q.stride(), q.dtype,
        kw.shape, kw.stride(), kw.dtype, kw.device,
        vw.shape, vw.stride(), vw.dtype, vw.device,
        scale, stream,
    )  # fmt: skip


def _replay(
    plan: _Plan,
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    kw: Tensor,
    vw: Tensor,
    scale: float,
    out: Tensor | None = None,
) -> Tensor | None:
    """The public op's call through ``plan`` (the output), or None where the plan does not apply (another
    signature, another module load, an ``out`` the op would refuse, unaligned addresses, a launch hook): then the
    caller takes the full path."""
    device = q.device
    if plan.owner is not _TOKEN or device != plan.device:
        return None
    stream = torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0  # as in _run
    if _signature(q, k_store, v_store, kw, vw, scale, stream) != plan.sig:
        return None
    after, key, grow = plan.after, plan.key, plan.grow
    if grow is not None:
        # a dynamic store's host-side length: the full path's length checks, then its split plan
        tokens = k_store.length
        if tokens != v_store.length or not (tokens or kw.shape[2]):
            return None  # the full path names what is wrong
        rows, block_n, slots, tok_at, share_at, seqs = grow
        splits, share = _split_plan(rows, tokens, block_n, slots, None)
        if splits != plan.merge_args[2]:  # another grid and other partials: the full path makes a new plan
            return None
        after = (*after[:tok_at], tokens, *after[tok_at + 1 : share_at], share, *after[share_at + 1 :])
        spec = (length_spec(tokens), length_spec(share))
        key = (*key[:-2], *spec)
    if out is None:
        out = _output(q)
    elif out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous() or out.device != device:
        return None  # the full path's check names what is wrong
    qp, kwp, vwp, op = q.data_ptr(), kw.data_ptr(), vw.data_ptr(), out.data_ptr()
    if (qp | kwp | vwp | op) % 16:  # the cached kernels were chosen for aligned addresses
        return None
    if grow is None:
        seq = plan.seq
        if seq is not None and not hooked() and seq.run(seq.handle, stream, qp, kwp, vwp, op):
            return out
    else:  # one sequence per specialisation of the length and the share (the kernel compiled for each)
        seq = seqs.get(spec)
        # built once the kernel is compiled
        if seq is None and spec not in seqs and key in plan.launcher.kernels:
            at = 1 + len(plan.before)  # the windows' place in the decoder's arguments
            seq = seqs[spec] = _sequence(
                plan.launcher, key, plan.grid, (qp, *plan.before, kwp, vwp, *after), at, plan.merge,
                plan.merge_key, plan.merge_grid, plan.merge_args, device.type == "cuda",
                (at + 2 + tok_at, at + 2 + share_at),
            )  # fmt: skip
        if seq is not None and not hooked() and seq.run(seq.handle, stream, qp, kwp, vwp, op, tokens, share):
            return out
    if not plan.launcher.launch(plan.grid, (qp, *plan.before, kwp, vwp, *after), stream, key):
        return None
    o_ptr, lse_ptr, splits = plan.merge_args
    if not plan.merge.launch(plan.merge_grid, (o_ptr, lse_ptr, op, splits), stream, plan.merge_key):
        o_part, lse_part = plan.refs[-4], plan.refs[-3]
        plan.merge(plan.merge_grid, (o_part, lse_part, out, splits), stream, plan.merge_key)
    return out
