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

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from mustafar.formats.bitmap import CompressedStore

_LOG2E = 1.4426950408889634


@triton.jit
def _popc8(x):
    """Popcount of a byte held in an int32 (SWAR; the interpreter has no libdevice)."""
    x = x - ((x >> 1) & 0x55)
    x = (x & 0x33) + ((x >> 2) & 0x33)
    return (x + (x >> 4)) & 0x0F


@triton.jit
def _gather_bit(ptr, byte, J: tl.constexpr, other):
    bit = (byte >> J) & 1
    v = tl.load(ptr, mask=bit != 0, other=other)
    return v, ptr + bit


@triton.jit
def _decode_tile(
    bits_ptr,
    vals_ptr,
    offs_ptr,
    row,
    val_row,
    tok,
    tmask,
    D: tl.constexpr,
    SLOT: tl.constexpr,
    VAR: tl.constexpr,
):
    """Dense [BLOCK_N, D] tile of the compressed tokens ``tok`` of one (batch, head) row; zeros where masked."""
    G: tl.constexpr = D // 8
    g = tl.arange(0, G)
    slot = row + tok
    byte = tl.load(bits_ptr + slot[:, None] * G + g[None, :], mask=tmask[:, None], other=0).to(tl.int32)
    cnt = _popc8(byte)
    first = tl.cumsum(cnt, axis=1) - cnt
    if VAR:
        base = val_row + tl.load(offs_ptr + slot, mask=tmask, other=0)
    else:
        base = slot * SLOT
    p = vals_ptr + base[:, None] + first
    zero = 0.0
    v0, p = _gather_bit(p, byte, 0, zero)
    v1, p = _gather_bit(p, byte, 1, zero)
    v2, p = _gather_bit(p, byte, 2, zero)
    v3, p = _gather_bit(p, byte, 3, zero)
    v4, p = _gather_bit(p, byte, 4, zero)
    v5, p = _gather_bit(p, byte, 5, zero)
    v6, p = _gather_bit(p, byte, 6, zero)
    v7, p = _gather_bit(p, byte, 7, zero)
    # join(a, b)[..., i] picks a (i = 0) or b (i = 1): this nesting lands v_j at flat position j of the group
    x = tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))
    return tl.reshape(x, [tok.shape[0], D])


@triton.jit
def _softmax_step(q, k, v, valid, m_i, l_i, acc, qk_scale, IEEE: tl.constexpr):
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = tl.where(valid[None, :], s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
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
    qk_scale,
    N_REP: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    D: tl.constexpr,
    K_SLOT: tl.constexpr,
    V_SLOT: tl.constexpr,
    K_VAR: tl.constexpr,
    V_VAR: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
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
    if s < NUM_SPLITS:
        start = s * tokens_per_split
        end = tl.minimum(start + tokens_per_split, T)
        for t0 in range(start, end, BLOCK_N):
            tok = t0 + tl.arange(0, BLOCK_N)
            valid = tok < end
            k = _decode_tile(k_bits, k_vals, k_offs, bh * k_cap, bh * k_vcap, tok, valid, D, K_SLOT, K_VAR)
            v = _decode_tile(v_bits, v_vals, v_offs, bh * v_cap, bh * v_vcap, tok, valid, D, V_SLOT, V_VAR)
            m_i, l_i, acc = _softmax_step(q, k, v, valid, m_i, l_i, acc, qk_scale, IEEE)
    else:
        kw_row = kw_ptr + b.to(tl.int64) * skwb + h.to(tl.int64) * skwh
        vw_row = vw_ptr + b.to(tl.int64) * svwb + h.to(tl.int64) * svwh
        for t0 in range(0, W, BLOCK_N):
            tok = t0 + tl.arange(0, BLOCK_N)
            valid = tok < W
            k = tl.load(kw_row + tok[:, None] * skwt + d[None, :], mask=valid[:, None], other=0.0)
            v = tl.load(vw_row + tok[:, None] * svwt + d[None, :], mask=valid[:, None], other=0.0)
            m_i, l_i, acc = _softmax_step(q, k, v, valid, m_i, l_i, acc, qk_scale, IEEE)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    lse = tl.where(l_i > 0, m_i + tl.log2(l_i), float("-inf"))
    row = (b.to(tl.int64) * heads_kv * N_REP + hq) * (NUM_SPLITS + 1) + s
    tl.store(o_ptr + row[:, None] * D + d[None, :], out, mask=hmask[:, None])
    tl.store(lse_ptr + row, lse, mask=hmask)


@triton.jit
def _merge_kernel(o_ptr, lse_ptr, out_ptr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr, D: tl.constexpr):
    """out[row] = Σ_s 2^(lse_s − M) · o_s / Σ_s 2^(lse_s − M) for one (batch, query head) row."""
    row = tl.program_id(0).to(tl.int64)
    sp = tl.arange(0, SPLITS_P2)
    d = tl.arange(0, D)
    lse = tl.load(lse_ptr + row * SPLITS + sp, mask=sp < SPLITS, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))
    o = tl.load(o_ptr + (row * SPLITS + sp)[:, None] * D + d[None, :], mask=(sp < SPLITS)[:, None], other=0.0)
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + row * D + d, out.to(out_ptr.dtype.element_ty))


def default_splits(batch: int, heads_kv: int, tokens: int, block_n: int, device: torch.device) -> int:
    """Enough splits for ~4 waves of programs, each split at least 4 blocks of tokens."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 4
    want = max(1, math.ceil(4 * sms / (batch * heads_kv)))
    return max(1, min(want, triton.cdiv(tokens, 4 * block_n)))


def sparse_decode_triton(
    q: Tensor,
    k_store: CompressedStore,
    v_store: CompressedStore,
    k_window: Tensor,
    v_window: Tensor,
    scale: float,
    num_splits: int | None = None,
    block_n: int = 32,
    num_warps: int = 4,
    num_stages: int = 2,
) -> Tensor:
    """Launch the fused split-K kernel and the merge; inputs already validated by the dispatcher."""
    b, hq, d = q.shape
    hkv = k_store.heads
    n_rep = hq // hkv
    t, w = k_store.length, k_window.shape[2]
    splits = num_splits or default_splits(b, hkv, t, block_n, q.device)
    tokens_per_split = triton.cdiv(triton.cdiv(max(t, 1), splits), block_n) * block_n
    o_part = torch.empty(b, hq, splits + 1, d, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(b, hq, splits + 1, dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    k_offs = k_store.bits if k_store.fixed else k_store.offs
    v_offs = v_store.bits if v_store.fixed else v_store.offs
    _sparse_decode_kernel[(b, hkv, splits + 1)](
        q,
        k_store.bits.view(torch.uint8),
        k_store.vals,
        k_offs,
        v_store.bits.view(torch.uint8),
        v_store.vals,
        v_offs,
        k_window,
        v_window,
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
        scale * _LOG2E,
        N_REP=n_rep,
        NUM_SPLITS=splits,
        D=d,
        K_SLOT=k_store.slot,
        V_SLOT=v_store.slot,
        K_VAR=not k_store.fixed,
        V_VAR=not v_store.fixed,
        BLOCK_H=max(16, triton.next_power_of_2(n_rep)),
        BLOCK_N=block_n,
        IEEE=q.dtype == torch.float32,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    _merge_kernel[(b * hq,)](
        o_part, lse_part, out, SPLITS=splits + 1, SPLITS_P2=triton.next_power_of_2(splits + 1), D=d
    )
    return out
