"""Sparse decode attention in Gluon: compressed tokens gathered straight into the MMA operand registers.

The Triton decoder (:mod:`mustafar.kernels.decode`) gathers each tile in a blocked layout and the compiler moves it
into the ``mma`` operand layout through shared memory; on the H100 that round trip was half of the L1 data-pipe
work, the unit the kernel is bound by (results/kernels/NOTES.md, round 4). Here every element of the K and V
operand tiles is computed in the operand layout itself (:class:`DotOperandLayout` of an ``mma.sync`` layout): the
lane that holds channel ``d`` of token ``t`` in the MMA fragment reads that token's bitmap word, ranks the bit with a
popcount and loads the value (zero where the bit is clear). The layouts are written out as 3-D linear layouts
(token, 32-channel word, bit) equal to the operand layouts, so the word and prefix of each token broadcast over its
bits without data movement.

Fixed-capacity stores, fp16/bf16, head_dim 64/128, GPU only (Gluon has no interpreter); the Triton kernel covers
everything else, and shares this kernel's split/merge scheme (window on the last split, LSE merge).

Measured on the H100 it is *slower* than the Triton v3 decoder (0.58-0.62x of dense SDPA vs 0.89-0.94x at s 0.7,
B >= 8): the operand layout scatters each thread's channels, so v3's cheap per-8-channel index chains become one
popcount and one 64-bit address per element. ``RUNS`` (``version=5``) keeps v3's run decode instead and moves each
tile into the operand layout through an explicit 128-byte-swizzled shared buffer (ldmatrix reads): as fast as v3
at 4 warps per program, 1.12-1.16x dense SDPA at one warp per program (no cross-warp barriers or reductions;
results/kernels/NOTES.md, round 5). The staged decoder (:mod:`mustafar.kernels.decode_staged`, v6) builds on it.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from mustafar.kernels.decode import _GATHER8_ASM  # v3's 8-channel walk, shared with the Triton decoder


@gluon.jit
def _popc(x):
    return gl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [x], dtype=gl.int32, is_pure=True, pack=1)


# Two neighbouring channels (d even, d + 1) of one token, which the MMA fragment keeps in consecutive registers:
# one popcount ranks the pair, each bit predicates a zeroed 2-byte load, the second address steps past the first
# value only when it was kept. Operands: $0 the packed pair; then each input once per element of the pair: $1,$2
# word; $3,$4 bits below; $5,$6 own bit; $7,$8 first index of the word; $9,$10 row pointer.
_PAIR_ASM: gl.constexpr = gl.constexpr(
    "{ .reg .pred p0, p1; .reg .b32 r, t; .reg .b64 a; .reg .b16 lo, hi;\n"
    "and.b32 t, $1, $3; popc.b32 r, t; add.u32 r, r, $7;\n"
    "and.b32 t, $1, $5; setp.ne.b32 p0, t, 0;\n"
    "and.b32 t, $2, $6; setp.ne.b32 p1, t, 0;\n"
    "mad.wide.u32 a, r, 2, $9;\n"
    "mov.b16 lo, 0; mov.b16 hi, 0;\n"
    "@p0 ld.global.b16 lo, [a];\n"
    "@p0 add.s64 a, a, 2;\n"
    "@p1 ld.global.b16 hi, [a];\n"
    "mov.b32 $0, {lo, hi}; }"
)


# One element (the V operand's register pairs are two tokens of one channel, so they are ranked separately).
_ONE_ASM: gl.constexpr = gl.constexpr(
    "{ .reg .pred p; .reg .b32 r, t; .reg .b64 a;\n"
    "and.b32 t, $1, $2; popc.b32 r, t; add.u32 r, r, $4;\n"
    "and.b32 t, $1, $3; setp.ne.b32 p, t, 0;\n"
    "mad.wide.u32 a, r, 2, $5;\n"
    "mov.b16 $0, 0;\n"
    "@p ld.global.b16 $0, [a]; }"
)


@gluon.jit
def _gather(
    word, below, bit, base, row_ptr, ASM: gl.constexpr, CONSTRAINTS: gl.constexpr, PACK: gl.constexpr
):
    """Run one of the gather PTX blocks above over every element (``PACK`` elements per block)."""
    z = gl.zeros_like(word & below & base)
    ptr = (row_ptr + z).to(gl.int64, bitcast=True)
    return gl.inline_asm_elementwise(
        ASM,
        CONSTRAINTS,
        [word + z, below + z, bit + z, base + z, ptr],
        dtype=row_ptr.dtype.element_ty,
        is_pure=True,
        pack=PACK,
    )


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _word_tile(
    bits_row,
    vals_row,
    tok,
    tmask,
    w: gl.constexpr,
    pre,
    W: gl.constexpr,
    SLOT: gl.constexpr,
    L2: gl.constexpr,
    T_AXIS: gl.constexpr,
):
    """Channels 32w..32w+31 of tokens ``tok`` in the 2-D layout ``L2`` ([bit, token] for K, [token, bit] for V),
    with ``pre`` the kept values before word ``w``; returns the tile and the running prefix after the word."""
    word = gl.load(bits_row + tok * W + w, mask=tmask, other=0)
    if T_AXIS == 1:
        b = gl.expand_dims(gl.arange(0, 32, layout=gl.SliceLayout(1, L2)), 1)
        word2 = gl.expand_dims(word, 0)
        base = gl.expand_dims(tok * SLOT + pre, 0)
    else:
        b = gl.expand_dims(gl.arange(0, 32, layout=gl.SliceLayout(0, L2)), 0)
        word2 = gl.expand_dims(word, 1)
        base = gl.expand_dims(tok * SLOT + pre, 1)
    if T_AXIS == 1:  # K: a thread's consecutive registers are channels d, d + 1 of one token
        x = _gather(word2, (1 << b) - 1, 1 << b, base, vals_row, _PAIR_ASM, "=r,r,r,r,r,r,r,r,r,l,l", 2)
    else:
        x = _gather(word2, (1 << b) - 1, 1 << b, base, vals_row, _ONE_ASM, "=h,r,r,r,r,l", 1)
    return x, pre + _popc(word)


@gluon.jit
def _operand_tile(
    bits_row,
    vals_row,
    tok,
    tmask,
    W: gl.constexpr,
    SLOT: gl.constexpr,
    L2: gl.constexpr,
    D: gl.constexpr,
    BLOCK_N: gl.constexpr,
    T_AXIS: gl.constexpr,
):
    """The K tile [D, BLOCK_N] (``T_AXIS`` 1) or the V tile [BLOCK_N, D] (``T_AXIS`` 0), in a layout equal to the
    MMA B operand up to register order: the words' tiles are joined on the fastest register axes, then moved to the
    channel axis (word index = high channel bits)."""
    x0, pre = _word_tile(bits_row, vals_row, tok, tmask, 0, tok * 0, W, SLOT, L2, T_AXIS)
    x1, pre = _word_tile(bits_row, vals_row, tok, tmask, 1, pre, W, SLOT, L2, T_AXIS)
    if W == 2:
        x = gl.join(x0, x1)
        if T_AXIS == 1:
            x = gl.permute(x, (2, 0, 1))
        else:
            x = gl.permute(x, (0, 2, 1))
    else:
        x2, pre = _word_tile(bits_row, vals_row, tok, tmask, 2, pre, W, SLOT, L2, T_AXIS)
        x3, pre = _word_tile(bits_row, vals_row, tok, tmask, 3, pre, W, SLOT, L2, T_AXIS)
        x = gl.join(gl.join(x0, x1), gl.join(x2, x3))
        if T_AXIS == 1:
            x = gl.permute(x, (3, 2, 0, 1))
        else:
            x = gl.permute(x, (0, 3, 2, 1))
    if T_AXIS == 1:
        out = gl.reshape(x, [D, BLOCK_N])
    else:
        out = gl.reshape(x, [BLOCK_N, D])
    return out


@gluon.jit
def _gl_sparse_decode_kernel(
    q_ptr,
    k_bits,
    k_vals,
    v_bits,
    v_vals,
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
    W_WIN,
    k_cap,
    v_cap,
    tokens_per_split,
    num_splits,
    qk_scale,
    N_REP: gl.constexpr,
    D: gl.constexpr,
    K_SLOT: gl.constexpr,
    V_SLOT: gl.constexpr,
    BLOCK_H: gl.constexpr,
    BLOCK_N: gl.constexpr,
    L2K: gl.constexpr,
    L2V: gl.constexpr,
    RUNS: gl.constexpr,
    NL_VALS: gl.constexpr,
):
    NW: gl.constexpr = gl.num_warps()
    W: gl.constexpr = D // 32
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, NW], instr_shape=[16, 8])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)

    b = gl.program_id(0)
    h = gl.program_id(1)
    s = gl.program_id(2)
    rh = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, op_a))
    rd = gl.arange(0, D, layout=gl.SliceLayout(0, op_a))
    hq = h * N_REP + rh
    hmask = rh < N_REP
    q = gl.load(
        q_ptr + b.to(gl.int64) * sqb + gl.expand_dims(hq, 1) * sqh + gl.expand_dims(rd, 0),
        mask=gl.expand_dims(hmask, 1),
        other=0.0,
    )

    m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, layout=gl.SliceLayout(1, mma))
    l_i = gl.zeros([BLOCK_H], gl.float32, layout=gl.SliceLayout(1, mma))
    acc = gl.zeros([BLOCK_H, D], gl.float32, layout=mma)
    bh = b.to(gl.int64) * heads_kv + h
    kb_row = k_bits + bh * k_cap * W
    vb_row = v_bits + bh * v_cap * W
    kv_row = k_vals + bh * k_cap * K_SLOT
    vv_row = v_vals + bh * v_cap * V_SLOT
    tk_l: gl.constexpr = gl.SliceLayout(0, L2K)
    tv_l: gl.constexpr = gl.SliceLayout(1, L2V)
    ts_l: gl.constexpr = gl.SliceLayout(0, mma)
    start = s * tokens_per_split
    end = gl.minimum(start + tokens_per_split, T)
    if RUNS:
        # v5: v3's run decode in registers, then one explicit 128-byte-swizzled shared tile per operand
        lw: gl.constexpr = gl.BlockedLayout([1, 1], [W, 32 // W], [1, NW], [0, 1])
        smem_l: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        k_sm = gl.allocate_shared_memory(k_vals.dtype.element_ty, [BLOCK_N, D], smem_l)
        v_sm = gl.allocate_shared_memory(v_vals.dtype.element_ty, [BLOCK_N, D], smem_l)
    if RUNS:
        # words of the next tile are loaded one iteration ahead, value rows prefetched into L2 two tiles ahead
        tw = start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, lw))
        kw_next = _run_words(kb_row, tw, tw < end, D, lw)
        vw_next = _run_words(vb_row, tw, tw < end, D, lw)
        lp: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
    for t0 in range(start, end, BLOCK_N):
        if RUNS:
            tw = t0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, lw))
            k_words = kw_next
            v_words = vw_next
            tn = tw + BLOCK_N
            kw_next = _run_words(kb_row, tn, tn < end, D, lw)
            vw_next = _run_words(vb_row, tn, tn < end, D, lw)
            p0 = t0 + 2 * BLOCK_N
            n_tok = gl.minimum(end - p0, BLOCK_N)
            if n_tok > 0:
                _prefetch_l2(kv_row + p0 * K_SLOT, n_tok * K_SLOT * 2, NL_VALS, lp)
                _prefetch_l2(vv_row + p0 * V_SLOT, n_tok * V_SLOT * 2, NL_VALS, lp)
            k_sm.store(_run_tile(kv_row, k_words, tw, K_SLOT, D, BLOCK_N))
            v_sm.store(_run_tile(vv_row, v_words, tw, V_SLOT, D, BLOCK_N))
            gl.thread_barrier()
            kt = k_sm.permute((1, 0)).load(op_b)
        else:
            tk = t0 + gl.arange(0, BLOCK_N, layout=tk_l)
            kt = gl.convert_layout(
                _operand_tile(kb_row, kv_row, tk, tk < end, W, K_SLOT, L2K, D, BLOCK_N, 1), op_b
            )
        sc = mma_v2(q, kt, gl.zeros([BLOCK_H, BLOCK_N], gl.float32, layout=mma))
        ts = t0 + gl.arange(0, BLOCK_N, layout=ts_l)
        sc = gl.where(gl.expand_dims(ts < end, 0), sc * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(sc, axis=1))
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(sc - gl.expand_dims(m_new, 1))
        l_i = l_i * alpha + gl.sum(p, axis=1)
        acc = acc * gl.expand_dims(alpha, 1)
        m_i = m_new
        if RUNS:
            v = v_sm.load(op_b)
            gl.thread_barrier()
        else:
            tv = t0 + gl.arange(0, BLOCK_N, layout=tv_l)
            v = gl.convert_layout(
                _operand_tile(vb_row, vv_row, tv, tv < end, W, V_SLOT, L2V, D, BLOCK_N, 0), op_b
            )
        acc = mma_v2(gl.convert_layout(p.to(v.dtype), op_a), v, acc)
    if s == num_splits - 1:
        kw_row = kw_ptr + b.to(gl.int64) * skwb + h.to(gl.int64) * skwh
        vw_row = vw_ptr + b.to(gl.int64) * svwb + h.to(gl.int64) * svwh
        for t0 in range(0, W_WIN, BLOCK_N):
            dk = gl.arange(0, D, layout=gl.SliceLayout(1, op_b))
            nk = t0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, op_b))
            kt = gl.load(
                kw_row + gl.expand_dims(nk, 0) * skwt + gl.expand_dims(dk, 1),
                mask=gl.expand_dims(nk < W_WIN, 0),
                other=0.0,
            )
            sc = mma_v2(q, kt, gl.zeros([BLOCK_H, BLOCK_N], gl.float32, layout=mma))
            ts = t0 + gl.arange(0, BLOCK_N, layout=ts_l)
            sc = gl.where(gl.expand_dims(ts < W_WIN, 0), sc * qk_scale, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(sc, axis=1))
            alpha = gl.exp2(m_i - m_new)
            p = gl.exp2(sc - gl.expand_dims(m_new, 1))
            l_i = l_i * alpha + gl.sum(p, axis=1)
            acc = acc * gl.expand_dims(alpha, 1)
            m_i = m_new
            nv = t0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, op_b))
            dv = gl.arange(0, D, layout=gl.SliceLayout(0, op_b))
            v = gl.load(
                vw_row + gl.expand_dims(nv, 1) * svwt + gl.expand_dims(dv, 0),
                mask=gl.expand_dims(nv < W_WIN, 1),
                other=0.0,
            )
            acc = mma_v2(gl.convert_layout(p.to(v.dtype), op_a), v, acc)

    l_safe = gl.where(l_i > 0, l_i, 1.0)
    out = acc / gl.expand_dims(l_safe, 1)
    lse = gl.where(l_i > 0, m_i + gl.log2(l_safe), float("-inf"))
    oh = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, mma))
    od = gl.arange(0, D, layout=gl.SliceLayout(0, mma))
    row = (b.to(gl.int64) * heads_kv * N_REP + h * N_REP + oh) * num_splits + s
    gl.store(
        o_ptr + gl.expand_dims(row, 1) * D + gl.expand_dims(od, 0), out, mask=gl.expand_dims(oh < N_REP, 1)
    )
    gl.store(lse_ptr + row, lse, mask=oh < N_REP)


@gluon.jit
def _walk8(row_ptr, idx, word):
    ptr = (row_ptr + gl.zeros_like(idx)).to(gl.int64, bitcast=True)
    return gl.inline_asm_elementwise(
        _GATHER8_ASM,
        "=h,=h,=h,=h,=h,=h,=h,=h,r,r,l",
        [word, idx, ptr],
        dtype=(row_ptr.dtype.element_ty,) * 8,
        is_pure=True,
        pack=1,
    )


@gluon.jit
def _join8(v0, v1, v2, v3, v4, v5, v6, v7):
    return gl.join(gl.join(gl.join(v0, v4), gl.join(v2, v6)), gl.join(gl.join(v1, v5), gl.join(v3, v7)))


@gluon.jit
def _run_words(bits_row, tok, tmask, D: gl.constexpr, LW: gl.constexpr):
    G: gl.constexpr = D // 32
    g = gl.arange(0, G, layout=gl.SliceLayout(1, LW))
    return gl.load(
        bits_row + gl.expand_dims(tok, 0) * G + gl.expand_dims(g, 1), mask=gl.expand_dims(tmask, 0), other=0
    )


@gluon.jit
def _prefetch_l2(base, nbytes, NL: gl.constexpr, LP: gl.constexpr):
    line = gl.minimum(gl.arange(0, NL, layout=LP) * 128, gl.maximum(nbytes - 1, 0))
    ptr = (base.to(gl.pointer_type(gl.int8)) + line).to(gl.int64, bitcast=True)
    gl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\nmov.u32 $0, 0;", "=r,l", [ptr], dtype=gl.int32, is_pure=False, pack=1
    )


@gluon.jit
def _run_tile(vals_row, word, tok, SLOT: gl.constexpr, D: gl.constexpr, BLOCK_N: gl.constexpr):
    """v3's decode of a [BLOCK_N, D] tile from its bitmap words ([D/32, BLOCK_N], one lane per word): four
    8-channel index chains per lane."""
    cnt = _popc(word)
    first = gl.associative_scan(cnt, 0, _add) - cnt
    idx = gl.expand_dims(tok * SLOT, 0) + first
    a0, a1, a2, a3, a4, a5, a6, a7 = _walk8(vals_row, idx, word)
    b0, b1, b2, b3, b4, b5, b6, b7 = _walk8(vals_row, idx + _popc(word & 0xFF), word >> 8)
    c0, c1, c2, c3, c4, c5, c6, c7 = _walk8(vals_row, idx + _popc(word & 0xFFFF), word >> 16)
    d0, d1, d2, d3, d4, d5, d6, d7 = _walk8(vals_row, idx + _popc(word & 0xFFFFFF), word >> 24)
    x = _join8(
        gl.join(gl.join(a0, c0), gl.join(b0, d0)),
        gl.join(gl.join(a1, c1), gl.join(b1, d1)),
        gl.join(gl.join(a2, c2), gl.join(b2, d2)),
        gl.join(gl.join(a3, c3), gl.join(b3, d3)),
        gl.join(gl.join(a4, c4), gl.join(b4, d4)),
        gl.join(gl.join(a5, c5), gl.join(b5, d5)),
        gl.join(gl.join(a6, c6), gl.join(b6, d6)),
        gl.join(gl.join(a7, c7), gl.join(b7, d7)),
    )
    x = gl.permute(x, (1, 0, 2, 3, 4, 5, 6))  # [BN, G, b4, b3, b2, b1, b0]
    return gl.reshape(x, [BLOCK_N, D])


def operand_layouts(
    d: int, block_n: int, num_warps: int
) -> tuple[gl.DistributedLinearLayout, gl.DistributedLinearLayout]:
    """2-D linear layouts of one 32-channel word of the K tile ([bit, token]) and of the V tile ([token, bit]):
    the ``mma.sync`` B-operand layouts (k_width 2, warps along N) of [D, BLOCK_N] and [BLOCK_N, D] without the
    register bits that select the word (joined back in :func:`_operand_tile`).

    B operand [K, N]: registers hold k bit 0, k bit 3 and the k repeats (bits 4..), then the N repeats; lanes hold
    k bits 1-2 and n bits 0-2; warps n bits 3.. (read off ``gl.to_linear_layout`` for D 128, BLOCK_N 64, 4 warps).
    """
    warp_n = [8 << i for i in range(num_warps.bit_length() - 1)]
    n_reg = [1 << i for i in range(3 + len(warp_n), block_n.bit_length() - 1)]
    lk = gl.DistributedLinearLayout(  # [32 bits (k), block_n tokens (n)]
        reg_bases=[[1, 0], [8, 0], [16, 0]] + [[0, n] for n in n_reg],
        lane_bases=[[2, 0], [4, 0], [0, 1], [0, 2], [0, 4]],
        warp_bases=[[0, n] for n in warp_n],
        block_bases=[],
        shape=[32, block_n],
    )
    warp_c = [8 << i for i in range(num_warps.bit_length() - 1)]  # V: n = channel within the word
    lv = gl.DistributedLinearLayout(  # [block_n tokens (k), 32 bits (n)]
        reg_bases=[[1, 0], [8, 0]] + [[1 << i, 0] for i in range(4, block_n.bit_length() - 1)],
        lane_bases=[[2, 0], [4, 0], [0, 1], [0, 2], [0, 4]],
        warp_bases=[[0, c] for c in warp_c],
        block_bases=[],
        shape=[block_n, 32],
    )
    return lk, lv
