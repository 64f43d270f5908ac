"""The staged sparse decoder (Gluon, "v6"): compressed tiles staged in shared memory by ``cp.async``, decoded there.

The default decoder where it applies (:func:`mustafar.kernels.dispatch.decoder_for`). Each program is one warp
(no cross-warp barriers or reductions; one warp per program was the fastest launch of every decoder measured on
the H100, results/kernels/NOTES.md round 5) that

* copies the next tile's bitmap words and value slots (contiguous in the fixed layout) into a shared-memory stage
  with 16-byte ``cp.async`` while it decodes the current one (two stages), so global latency is off the critical path
  and the global traffic is whole sectors;
* decodes one lane per 32-channel word, four 8-channel index chains (the portable decoder's scheme) with 2-byte
  shared loads at 32-bit addresses that step by 2 under each kept bit (no per-element address multiply);
* computes with tokens on the MMA's M side (scores Kqᵀ as [tokens, heads], output Vᵀp as [D, heads]): the GQA group
  pads to the MMA's N = 8 instead of M = 16.

The PTX addresses the staging ring from ``global_smem`` plus its offset in the kernel's single shared allocation.
Fixed layouts, fp16/bf16, head_dim 64/128, GPU only (Gluon has no interpreter); split/merge scheme and the
device-side length of static stores (constexpr ``DEVICE_LEN``) as in :mod:`mustafar.kernels.decode`, which
launches it.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2


@gluon.jit
def _popc(x):
    return gl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [x], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _join8(v0, v1, v2, v3, v4, v5, v6, v7):
    return gl.join(gl.join(gl.join(v0, v4), gl.join(v2, v6)), gl.join(gl.join(v1, v5), gl.join(v3, v7)))


# 8 channels of one lane from shared memory: bit k of $8 predicates a zeroed 2-byte load at the running address
# (global_smem + $9), which then steps by 2.
_WALK8_SHARED_ASM: gl.constexpr = gl.constexpr(
    "\n".join(
        ["{", ".reg .pred p;", ".reg .b32 t, a;", "mov.u32 a, global_smem;", "add.u32 a, a, $9;"]
        + [
            line
            for k in range(8)
            for line in (
                f"and.b32 t, $8, {1 << k};",
                "setp.ne.b32 p, t, 0;",
                f"mov.b16 ${k}, 0;",
                f"@p ld.shared.b16 ${k}, [a];",
            )
            + (("@p add.u32 a, a, 2;",) if k < 7 else ())
        ]
        + ["}"]
    )
)
# cp.async of one chunk to shared address $1 (global_smem's address included: :func:`_smem_base`) from $2 where
# $3 is nonzero. 16-byte chunks bypass L1; 8-byte ones (a head_dim-64 token's bitmap) and 4-byte ones (fp8 stores'
# per-token scales) go through it
_CP_ASYNC_ASM: gl.constexpr = gl.constexpr(
    "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p cp.async.cg.shared.global [$1], [$2], 16; mov.u32 $0, 0; }"
)
_CP_ASYNC8_ASM: gl.constexpr = gl.constexpr(
    "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p cp.async.ca.shared.global [$1], [$2], 8; mov.u32 $0, 0; }"
)
_CP_ASYNC4_ASM: gl.constexpr = gl.constexpr(
    "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p cp.async.ca.shared.global [$1], [$2], 4; mov.u32 $0, 0; }"
)
_LOAD_SHARED_ASM: gl.constexpr = gl.constexpr(
    "{ .reg .b32 a; mov.u32 a, global_smem; add.u32 a, a, $1; ld.shared.b32 $0, [a]; }"
)


@gluon.constexpr_function
def _swizzled(SB, SP, CHUNK):
    """Whether ``SB``-byte slots copied in ``CHUNK``-byte chunks at a stride of ``SP`` bytes are staged unpadded and
    XOR-swizzled: :func:`mustafar.kernels.scatter_ptx.swizzled_slots`'s rule, restated here because Triton's
    dependency scan refuses plain Python functions called from a kernel's constexpr functions."""
    return SP == SB and CHUNK == 16 and (SB % 128 == 0 or SB in (32, 64))


@gluon.jit
def _row_xor(r, CPT: gl.constexpr, FRAG: gl.constexpr):
    """The chunk XOR of swizzled row ``r`` (:func:`mustafar.kernels.scatter_ptx.row_xor`, restated for the same
    reason as :func:`_swizzled`): r mod 8, or for sides read as MMA fragments (``FRAG``) its three bits rotated so
    that the rows one fragment load pairs differ in the bit that separates their chunks."""
    r = r % 8
    if FRAG and CPT == 4:
        r = ((r << 1) | (r >> 2)) & 7
    elif FRAG and CPT == 8:
        r = ((r >> 1) | (r << 2)) & 7
    return r


@gluon.jit
def _smem_base():
    """The shared address of ``global_smem``, where the PTX's byte offsets start. Pure, so it is computed once per
    program: added inside each copy's PTX it cost an add per chunk and tile (round 34)."""
    return gl.inline_asm_elementwise(
        "mov.u32 $0, global_smem;", "=r", [], dtype=gl.int32, is_pure=True, pack=1
    )


@gluon.jit
def _copy_region(
    src,
    dst_off,
    n_valid,
    NCH: gl.constexpr,
    NCH_P2: gl.constexpr,
    CHUNK: gl.constexpr,
    LC: gl.constexpr,
    CPT: gl.constexpr = 1,
    SP: gl.constexpr = 0,
    FRAG: gl.constexpr = False,
):
    """Start cp.async copies of the first ``NCH`` ``CHUNK``-byte (16, 8 or 4) chunks at ``src`` (an int32 pointer) to
    shared byte ``dst_off``; chunks at or past ``n_valid`` are skipped (the decoder zeroes the tokens they hold).
    Back to back by default; with ``SP`` a token's ``CPT`` chunks land at ``dst_off + t·SP`` (padded slots), or, for
    unpadded slots of 16-byte chunks that fill whole 128-byte rows (``CPT`` a multiple of 8, or 2 or 4: two or four
    tokens to a row), XOR-swizzled: a slot's (or a row's) chunk k at chunk k XOR :func:`_row_xor` of its slot or
    row (``FRAG``: the pattern of slots read as MMA fragments; :func:`mustafar.kernels.scatter_ptx.swizzled_slots`)."""
    c = gl.arange(0, NCH_P2, layout=LC)
    dst_off = dst_off + _smem_base()
    if _swizzled(CPT * CHUNK, SP, CHUNK):
        RC: gl.constexpr = CPT if CPT > 8 else 8  # chunks one XOR pattern spans: a slot, or a row of slots
        at = dst_off + (c ^ _row_xor(c // RC, CPT, FRAG)) * CHUNK
    elif SP == 0 or SP == CPT * CHUNK:  # contiguous: no per-chunk division
        at = dst_off + c * CHUNK
    else:
        at = dst_off + (c // CPT) * SP + (c % CPT) * CHUNK
    gl.inline_asm_elementwise(
        _CP_ASYNC_ASM if CHUNK == 16 else (_CP_ASYNC8_ASM if CHUNK == 8 else _CP_ASYNC4_ASM),
        "=r,r,l,r",
        [at, (src + c * (CHUNK // 4)).to(gl.int64, bitcast=True), ((c < NCH) & (c < n_valid)).to(gl.int32)],
        dtype=gl.int32,
        is_pure=False,
        pack=1,
    )


@gluon.jit
def _issue_tile(
    stage_off,
    k_bits_row,
    v_bits_row,
    k_vals_row,
    v_vals_row,
    t0,
    end,
    G: gl.constexpr,
    K_SLOT: gl.constexpr,
    V_SLOT: gl.constexpr,
    BLOCK_N: gl.constexpr,
    K_CH_P2: gl.constexpr,
    V_CH_P2: gl.constexpr,
    LC: gl.constexpr,
):
    """Start copying tile ``t0`` (its tokens before ``end``) to the stage at shared byte ``stage_off``: K words,
    V words, K value slots, V value slots, one commit group."""
    n = gl.maximum(gl.minimum(end - t0, BLOCK_N), 0)
    WB: gl.constexpr = BLOCK_N * G * 4  # bytes of one tile's words
    _copy_region(
        k_bits_row + t0 * G, stage_off, n, BLOCK_N, BLOCK_N, 4 * G, LC
    )  # one chunk per token's words
    _copy_region(v_bits_row + t0 * G, stage_off + WB, n, BLOCK_N, BLOCK_N, 4 * G, LC)
    KV: gl.constexpr = 2 * WB
    VV: gl.constexpr = KV + BLOCK_N * K_SLOT * 2
    _copy_region(
        k_vals_row + t0 * (K_SLOT // 2),
        stage_off + KV,
        n * K_SLOT // 8,
        BLOCK_N * K_SLOT // 8,
        K_CH_P2,
        16,
        LC,
    )
    _copy_region(
        v_vals_row + t0 * (V_SLOT // 2),
        stage_off + VV,
        n * V_SLOT // 8,
        BLOCK_N * V_SLOT // 8,
        V_CH_P2,
        16,
        LC,
    )
    async_copy.commit_group()


@gluon.jit
def _walk8(addr, word, DT: gl.constexpr):
    return gl.inline_asm_elementwise(
        _WALK8_SHARED_ASM,
        "=h,=h,=h,=h,=h,=h,=h,=h,r,r",
        [word, addr],
        dtype=(gl.int16,) * 8,
        is_pure=False,
        pack=1,
    )


@gluon.jit
def _staged_tile(
    words_off,
    vals_off,
    n_tok,
    DT: gl.constexpr,
    SLOT: gl.constexpr,
    D: gl.constexpr,
    BLOCK_N: gl.constexpr,
    LW: gl.constexpr,
):
    """Decode the [BLOCK_N, D] tile whose words start at shared byte ``words_off`` and value slots at ``vals_off``;
    tokens at or past ``n_tok`` decode to zeros whatever the buffer holds."""
    G: gl.constexpr = D // 32
    g = gl.expand_dims(gl.arange(0, G, layout=gl.SliceLayout(1, LW)), 1)
    tok = gl.expand_dims(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, LW)), 0)
    word = gl.inline_asm_elementwise(
        _LOAD_SHARED_ASM, "=r,r", [words_off + (tok * G + g) * 4], dtype=gl.int32, is_pure=False, pack=1
    )
    word = gl.where(tok < n_tok, word, 0)
    cnt = _popc(word)
    first = gl.associative_scan(cnt, 0, _add) - cnt
    addr = vals_off + (tok * SLOT + first) * 2
    a0, a1, a2, a3, a4, a5, a6, a7 = _walk8(addr, word, DT)
    b0, b1, b2, b3, b4, b5, b6, b7 = _walk8(addr + _popc(word & 0xFF) * 2, word >> 8, DT)
    c0, c1, c2, c3, c4, c5, c6, c7 = _walk8(addr + _popc(word & 0xFFFF) * 2, word >> 16, DT)
    d0, d1, d2, d3, d4, d5, d6, d7 = _walk8(addr + _popc(word & 0xFFFFFF) * 2, word >> 24, DT)
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
    return gl.reshape(x, [BLOCK_N, D]).to(DT, bitcast=True)


@gluon.jit
def _softmax_probs(sc, valid, m_i, l_i, qk_scale):
    """Online-softmax update for scores ``sc`` [tokens, heads] (log2 domain): p, the new running max and sum, and
    the factor ``alpha`` [heads] the accumulator must be multiplied by (left to the caller, which may fold more
    into that one multiply)."""
    sc = gl.where(gl.expand_dims(valid, 1), sc * qk_scale, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(sc, axis=0))
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(sc - gl.expand_dims(m_new, 0))
    return p, m_new, l_i * alpha + gl.sum(p, axis=0), alpha


@gluon.jit
def _softmax_step(sc, valid, m_i, l_i, acc, qk_scale):
    """:func:`_softmax_probs` with the accumulator rescaled: p and the new state."""
    p, m_new, l_new, alpha = _softmax_probs(sc, valid, m_i, l_i, qk_scale)
    return p, m_new, l_new, acc * gl.expand_dims(alpha, 0)


@gluon.jit
def _q_rows(q_ptr, sqb, sqh, b, h, rd, N_REP: gl.constexpr, BLOCK_H: gl.constexpr):
    """qᵀ [rows, heads] of the program's GQA group as an MMA's B operand, row p holding q's channel ``rd[p]``
    (``rd`` in the operand's row slice; padded heads zero)."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    rh = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(0, op_b))
    return gl.load(
        q_ptr + b.to(gl.int64) * sqb + gl.expand_dims(h * N_REP + rh, 0) * sqh + gl.expand_dims(rd, 1),
        mask=gl.expand_dims(rh < N_REP, 0),
        other=0.0,
    )


@gluon.jit
def _q_tile(q_ptr, sqb, sqh, b, h, N_REP: gl.constexpr, D: gl.constexpr, BLOCK_H: gl.constexpr):
    """qᵀ [D, heads] of the program's GQA group (padded heads zero), the dense window's MMA operand."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    return _q_rows(q_ptr, sqb, sqh, b, h, gl.arange(0, D, layout=gl.SliceLayout(1, op_b)), N_REP, BLOCK_H)


@gluon.jit
def _softmax_state(BLOCK_H: gl.constexpr):
    """The empty online-softmax state (running max, running sum) per head."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, layout=gl.SliceLayout(0, mma))
    l_i = gl.zeros([BLOCK_H], gl.float32, layout=gl.SliceLayout(0, mma))
    return m_i, l_i


@gluon.jit
def _finish(
    kw_ptr,
    vw_ptr,
    o_ptr,
    lse_ptr,
    qt,
    m_i,
    l_i,
    acc,
    b,
    h,
    s,
    num_splits,
    skwb,
    skwh,
    skwt,
    svwb,
    svwh,
    svwt,
    heads_kv,
    W_WIN,
    qk_scale,
    N_REP: gl.constexpr,
    D: gl.constexpr,
    BLOCK_H: gl.constexpr,
    BLOCK_N: gl.constexpr,
    PDL: gl.constexpr,
):
    """The dense window (attended by the last split) and the split's partial output and log-sum-exp: shared by
    the staged and the scatter decoders (their accumulators are laid out alike). ``PDL``: the merge is launched as
    a programmatic dependent (sm_90+, :func:`mustafar.kernels.decode._merge_launch`); each program lets it launch
    here, past its token loop, so the merge's launch and block scheduling overlap the last programs' epilogues (the
    merge still waits for this grid to complete before it reads a partial)."""
    if PDL:
        gl.inline_asm_elementwise(
            "griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1
        )
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    ts_l: gl.constexpr = gl.SliceLayout(1, mma)
    DT: gl.constexpr = kw_ptr.dtype.element_ty
    if s == num_splits - 1:
        kw_row = kw_ptr + b.to(gl.int64) * skwb + h.to(gl.int64) * skwh
        vw_row = vw_ptr + b.to(gl.int64) * svwb + h.to(gl.int64) * svwh
        for t0 in range(0, W_WIN, BLOCK_N):
            nk = t0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, op_a))
            dk = gl.arange(0, D, layout=gl.SliceLayout(0, op_a))
            kt = gl.load(
                kw_row + gl.expand_dims(nk, 1) * skwt + gl.expand_dims(dk, 0),
                mask=gl.expand_dims(nk < W_WIN, 1),
                other=0.0,
            )
            sc = mma_v2(kt, qt, gl.zeros([BLOCK_N, BLOCK_H], gl.float32, layout=mma))
            ts = t0 + gl.arange(0, BLOCK_N, layout=ts_l)
            p, m_i, l_i, acc = _softmax_step(sc, ts < W_WIN, m_i, l_i, acc, qk_scale)
            dv = gl.arange(0, D, layout=gl.SliceLayout(1, op_a))
            nv = t0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, op_a))
            vt = gl.load(
                vw_row + gl.expand_dims(nv, 0) * svwt + gl.expand_dims(dv, 1),
                mask=gl.expand_dims(nv < W_WIN, 0),
                other=0.0,
            )
            acc = mma_v2(vt, gl.convert_layout(p.to(DT), op_b), acc)

    l_safe = gl.where(l_i > 0, l_i, 1.0)
    out = acc / gl.expand_dims(l_safe, 0)
    lse = gl.where(l_i > 0, m_i + gl.log2(l_safe), float("-inf"))
    oh = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(0, mma))
    od = gl.arange(0, D, layout=gl.SliceLayout(1, mma))
    row = (b.to(gl.int64) * heads_kv * N_REP + h * N_REP + oh) * num_splits + s
    gl.store(
        o_ptr + gl.expand_dims(row, 0) * D + gl.expand_dims(od, 1), out, mask=gl.expand_dims(oh < N_REP, 0)
    )
    gl.store(lse_ptr + row, lse, mask=oh < N_REP)


@gluon.jit
def _st_sparse_decode_kernel(
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
    k_len,
    v_len,
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
    SMEM_WORDS: gl.constexpr,
    K_CH_P2: gl.constexpr,
    V_CH_P2: gl.constexpr,
    DEVICE_LEN: gl.constexpr,
    PDL: gl.constexpr,
):
    G: gl.constexpr = D // 32
    STAGE_B: gl.constexpr = BLOCK_N * (8 * G + 2 * (K_SLOT + V_SLOT))  # bytes per stage
    DT: gl.constexpr = q_ptr.dtype.element_ty
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    lw: gl.constexpr = gl.BlockedLayout([1, 1], [G, 32 // G], [1, 1], [0, 1])
    lc: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    # one allocation (so at shared offset 0, SMEM_WORDS a power of two): the two dense operand tiles, then the
    # staging ring of two stages, which only the PTX addresses (from RING_OFF)
    TILE_W: gl.constexpr = BLOCK_N * D // 2
    RING_OFF: gl.constexpr = 8 * TILE_W
    smem = gl.allocate_shared_memory(gl.int32, [SMEM_WORDS], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    tile_l: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    k_sm = smem.slice(0, TILE_W)._reinterpret(DT, [BLOCK_N, D], tile_l)
    v_sm = smem.slice(TILE_W, TILE_W)._reinterpret(DT, [BLOCK_N, D], tile_l)

    b = gl.program_id(0)
    h = gl.program_id(1)
    s = gl.program_id(2)
    qt = _q_tile(q_ptr, sqb, sqh, b, h, N_REP, D, BLOCK_H)
    m_i, l_i = _softmax_state(BLOCK_H)
    acc = gl.zeros([D, BLOCK_H], gl.float32, layout=mma)  # (V ᵀ p) [D, heads]

    bh = b.to(gl.int64) * heads_kv + h
    kb_row = k_bits + bh * k_cap * G
    vb_row = v_bits + bh * v_cap * G
    kv_row = k_vals + bh * k_cap * (K_SLOT // 2)
    vv_row = v_vals + bh * v_cap * (V_SLOT // 2)
    if DEVICE_LEN:
        # static stores: this batch row's token count on the device; T is the capacity the plan was made for
        T = gl.minimum(gl.minimum(gl.load(k_len + b), gl.load(v_len + b)), T)
    start = s * tokens_per_split
    end = gl.minimum(start + tokens_per_split, T)
    ts_l: gl.constexpr = gl.SliceLayout(1, mma)
    _issue_tile(
        RING_OFF, kb_row, vb_row, kv_row, vv_row, start, end, G, K_SLOT, V_SLOT, BLOCK_N, K_CH_P2, V_CH_P2, lc
    )
    for t0 in range(start, end, BLOCK_N):
        i = (t0 - start) // BLOCK_N
        _issue_tile(
            RING_OFF + ((i + 1) % 2) * STAGE_B,
            kb_row,
            vb_row,
            kv_row,
            vv_row,
            t0 + BLOCK_N,
            end,
            G,
            K_SLOT,
            V_SLOT,
            BLOCK_N,
            K_CH_P2,
            V_CH_P2,
            lc,
        )
        async_copy.wait_group(1)
        gl.thread_barrier()
        base = RING_OFF + (i % 2) * STAGE_B
        n_tok = end - t0
        k_sm.store(_staged_tile(base, base + 8 * BLOCK_N * G, n_tok, DT, K_SLOT, D, BLOCK_N, lw))
        v_sm.store(
            _staged_tile(
                base + 4 * BLOCK_N * G,
                base + 8 * BLOCK_N * G + 2 * BLOCK_N * K_SLOT,
                n_tok,
                DT,
                V_SLOT,
                D,
                BLOCK_N,
                lw,
            )
        )
        gl.thread_barrier()
        sc = mma_v2(k_sm.load(op_a), qt, gl.zeros([BLOCK_N, BLOCK_H], gl.float32, layout=mma))
        ts = t0 + gl.arange(0, BLOCK_N, layout=ts_l)
        p, m_i, l_i, acc = _softmax_step(sc, ts < end, m_i, l_i, acc, qk_scale)
        acc = mma_v2(v_sm.permute((1, 0)).load(op_a), gl.convert_layout(p.to(DT), op_b), acc)
    async_copy.wait_group(0)
    smem._keep_alive()
    _finish(
        kw_ptr, vw_ptr, o_ptr, lse_ptr, qt, m_i, l_i, acc, b, h, s, num_splits, skwb, skwh, skwt, svwb, svwh,
        svwt, heads_kv, W_WIN, qk_scale, N_REP, D, BLOCK_H, BLOCK_N, PDL,
    )  # fmt: skip
