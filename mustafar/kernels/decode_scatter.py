"""The scatter sparse decoder (Gluon, "v7"): decode work proportional to the kept values, for word-quota stores.

The default decoder for stores packed under the ``word`` keep rule (:func:`mustafar.kernels.dispatch.decoder_for`).
Each program is one warp over 32-token tiles, one token per lane:

* a ring of staged sides (K or V of one tile: bitmap words and value slots, contiguous in the fixed layout),
  filled by ``cp.async``: while one side is decoded the next one or two are in flight (``SIDES``, with the
  register cap from :func:`mustafar.kernels.decode._scatter_plan`); the slots land XOR-swizzled in whole 128-byte
  rows (:func:`mustafar.kernels.scatter_ptx.swizzled_slots`) or at a stride of an odd number of copy chunks
  (``K_SP``/``V_SP``), so each lane's loads of its own slot do not share banks;
* K is scored in registers: every lane walks its token's kept bits (compile-time trip counts per bitmap word) and
  fetches the group's queries at each kept channel from the lane that holds them (``shfl.sync``), accumulating
  ``k·q`` in fp32, or for fp8 codes in packed fp16 against q scaled by a power of two (:func:`_q_half_scale`,
  :func:`mustafar.kernels.scatter_ptx.score_asm`). No dense K tile, no shared-memory traffic beyond the staged
  bytes: the kernel was bound by the shared-memory pipe (results/kernels/NOTES.md, round 7);
* V is scattered into one zeroed, swizzled dense [32, D] tile (:func:`~mustafar.kernels.scatter_ptx.scatter_asm`)
  that the P·V MMA reads in two 16-token halves (tokens on the MMA's K side, the GQA group padded to N = 8, as the
  staged decoder).

Stores with fixed groups take a faster path on each side: V kept two of every four consecutive channels is
expanded into a [tokens, D] row tile in registers (:func:`~mustafar.kernels.scatter_ptx.expand_asm`, no zeroing,
16-byte stores), and then K kept four of every eight (consecutive, or strided with q loaded in the store's order)
is expanded straight into the registers of the scores' MMA operand, 64 channels at a time, each lane expanding the
fragment it owns (:func:`~mustafar.kernels.scatter_ptx.expand8_frag_asm`, :func:`_expand_k_half`: no tile); fp8
codes are widened to fp16 on both sides, the scores and P weighed by the tokens' scales. fp8 stores kept five of
every sixteen channels expand the same way on both sides, a lane's 16 MMA channels being one group
(:func:`~mustafar.kernels.scatter_ptx.expand16_frag_asm`; which stores expand:
:func:`~mustafar.kernels.scatter_ptx.key_group`, ``value_group``). Expanded fp8 values skip the tile: they go
straight into the P·V MMA's operand (:func:`_pv_operand`, ``movmatrix``; ``decode.VALUES_IN_OPERAND``).

Split/merge scheme, dense window and device-side length of static stores as in
:mod:`mustafar.kernels.decode_staged`, whose window/output code it shares. Fixed layouts, fp16/bf16, head_dim
64/128, GQA groups of at most 8 query heads, GPU only.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from mustafar.kernels.decode_staged import (
    _LOAD_SHARED_ASM,
    _copy_region,
    _finish,
    _join8,
    _q_rows,
    _q_tile,
    _row_xor,
    _softmax_probs,
    _softmax_state,
    _softmax_step,
    _swizzled,
)
from mustafar.kernels.scatter_ptx import HALF_SCORE_Q_BOUND

# 126 + log2 of the bound: a |q| below 2^(b - 126), b its biased exponent, times 2^(_Q_EXP - b) is below the bound
_Q_EXP: gl.constexpr = gl.constexpr(126 + HALF_SCORE_Q_BOUND.bit_length() - 1)


@gluon.jit
def _issue_side(slot_off, bits_row, vals_row, scales_row, t0, end, G: gl.constexpr, SB: gl.constexpr,
                SP: gl.constexpr, CK: gl.constexpr, FP8: gl.constexpr, BLOCK_N: gl.constexpr, CH_P2: gl.constexpr,
                LC: gl.constexpr, FRAG: gl.constexpr):  # fmt: skip
    """Start copying one side of tile ``t0`` (its tokens before ``end``) to the ring slot at shared byte
    ``slot_off``: the words, then the value slots (``SB`` bytes per token in ``CK``-byte chunks, at a stride of
    ``SP`` bytes; ``FRAG``: swizzled for reads as MMA fragments) and, fp8, the tokens' scales; one commit group
    (empty past ``end``)."""
    n = gl.maximum(gl.minimum(end - t0, BLOCK_N), 0)
    _copy_region(bits_row + t0 * G, slot_off, n, BLOCK_N, BLOCK_N, 4 * G, LC)
    vals_at = slot_off + BLOCK_N * G * 4
    _copy_region(
        vals_row + t0 * (SB // 4),
        vals_at,
        n * SB // CK,
        BLOCK_N * SB // CK,
        CH_P2,
        CK,
        LC,
        SB // CK,
        SP,
        FRAG,
    )
    if FP8:  # one 4-byte chunk per token: a (batch, head) row of scales starts 4-byte aligned only
        _copy_region(scales_row + t0, vals_at + BLOCK_N * SP, n, BLOCK_N, BLOCK_N, 4, LC)
    async_copy.commit_group()


@gluon.constexpr_function
def _vt_tile_layout(D):
    """The dense tile: Vᵀ of the 32 tokens as four [D, 8] blocks of 8 tokens (16-byte rows, blocks one after the
    other), seen as [2D, 16] (tokens 0-15 above 16-31). Block k's channel c sits at row c XOR 4·(k mod 2): the
    ldmatrix eight-row reads stay one contiguous 128 bytes, and odd blocks' stores move to other banks.
    (offset bit → [row, column] it addresses; scatter_ptx computes the same address.)"""
    channels = [[1 << k, 0] for k in range(D.bit_length() - 1)]
    return gl.SharedLinearLayout(offset_bases=[[0, 1], [0, 2], [0, 4], *channels, [4, 8], [D, 0]])


@gluon.constexpr_function
def _vt8_tile_layout(D):
    """The e4m3 tile of fp8 stores: Vᵀ [D, 32] of codes as two [D, 16] blocks of 16 tokens (16-byte rows, blocks
    one after the other); block k holds channel c at row c XOR 4·k. The same 16-byte rows as the fp16 tile, so
    the scatter's address is the same two instructions; zeroing and ldmatrix move half the bytes."""
    channels = [[1 << k, 0] for k in range(D.bit_length() - 1)]
    return gl.SharedLinearLayout(offset_bases=[[0, 1], [0, 2], [0, 4], [0, 8], *channels, [4, 16]])


@gluon.jit
def _scatter_side(tile, words_off, vals_off, n_tok, ASM: gl.constexpr, DT: gl.constexpr, SB: gl.constexpr,
                  D: gl.constexpr, BLOCK_N: gl.constexpr, TILE_OFF: gl.constexpr, LC: gl.constexpr):  # fmt: skip
    """Zero the tile, then scatter one staged side (words at shared byte ``words_off``, value slots at
    ``vals_off``) into it, one token per lane; tokens at or past ``n_tok`` stay zero."""
    R: gl.constexpr = tile.shape[0]
    C: gl.constexpr = tile.shape[1]
    V: gl.constexpr = 128 // DT.primitive_bitwidth  # elements per 16-byte store
    zl: gl.constexpr = gl.BlockedLayout([1, V], [32 * V // C, C // V], [1, 1], [1, 0])
    tile.store(gl.zeros([R, C], DT, layout=zl))
    gl.thread_barrier()
    G: gl.constexpr = D // 32
    r = gl.arange(0, BLOCK_N, layout=LC)
    if DT.primitive_bitwidth == 8:  # _vt8_tile_layout: blocks of 16 tokens, one byte each
        col = TILE_OFF + (r // 16) * (16 * D) + r % 16
        xor = (r // 16) * 4
    else:  # _vt_tile_layout: blocks of 8 tokens, two bytes each
        col = TILE_OFF + (r // 8) * (16 * D) + (r % 8) * 2
        xor = ((r // 8) % 2) * 4
    gl.inline_asm_elementwise(
        ASM,
        "=r,r,r,r,r,r",
        [words_off + r * (4 * G), vals_off + r * SB, col, xor, (r < n_tok).to(gl.int32)],
        dtype=gl.int32,
        is_pure=False,
        pack=1,
    )
    gl.thread_barrier()


@gluon.constexpr_function
def _v_rows_layout():
    """The dense V tile of two-of-four stores: [tokens, D] rows, 16-byte chunk k of row r at chunk k XOR (r mod 8).
    Each lane writes its token's row in whole chunks, and the eight lanes of a store phase cover all 32 banks; the
    P·V step reads it transposed (ldmatrix .trans), eight rows of one chunk column, as conflict-free."""
    return gl.SwizzledSharedLayout(8, 1, 8, [1, 0])


@gluon.jit
def _expand_side(words_off, vals_off, n_tok, ASM: gl.constexpr, SB: gl.constexpr, D: gl.constexpr,
                 BLOCK_N: gl.constexpr, TILE_OFF: gl.constexpr, LC: gl.constexpr):  # fmt: skip
    """Write one staged two-of-four V side as the dense rows of the tile, one token per lane
    (:func:`~mustafar.kernels.scatter_ptx.expand_asm`); rows at or past ``n_tok`` are written zero."""
    G: gl.constexpr = D // 32
    r = gl.arange(0, BLOCK_N, layout=LC)
    gl.inline_asm_elementwise(
        ASM,
        "=r,r,r,r,r",
        [words_off + r * (4 * G), vals_off + r * SB, TILE_OFF + r * (2 * D), (r < n_tok).to(gl.int32)],
        dtype=gl.int32,
        is_pure=False,
        pack=1,
    )
    gl.thread_barrier()


@gluon.jit
def _pv_rows(tile, p, acc, op_a: gl.constexpr, op_b: gl.constexpr, BLOCK_N: gl.constexpr):
    """``acc + Vᵀ p`` over the [tokens, D] row tile of two-of-four stores, in two 16-token halves as :func:`_pv`
    (each half read transposed as the MMA's A operand)."""
    H: gl.constexpr = BLOCK_N // 2
    p0, p1 = gl.split(gl.permute(gl.reshape(p, [2, H, p.shape[1]]), (1, 2, 0)))
    acc = mma_v2(tile.slice(0, H).permute((1, 0)).load(op_a), gl.convert_layout(p0, op_b), acc)
    return mma_v2(tile.slice(H, H).permute((1, 0)).load(op_a), gl.convert_layout(p1, op_b), acc)


@gluon.constexpr_function
def _k_frag_layout():
    """The register layout of :func:`_expand_k_half`'s [tokens, 64] result: the scores' MMA A operand
    (``DotOperandLayout(0, mma, k_width=2)`` of [32, 64]) with its registers reordered so that each lane's
    ``FRAG_PACK`` consecutive elements are one token's 16 channels (one PTX call); converting it to the operand
    moves no data."""
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [0, 8], [0, 16], [0, 32], [8, 0], [16, 0]],
        lane_bases=[[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]],
        warp_bases=[],
        block_bases=[],
        shape=[32, 64],
    )


@gluon.jit
def _staged_at(t, x, SB: gl.constexpr, SP: gl.constexpr, CK: gl.constexpr):
    """Shared byte offset, within a staged side's value region, of byte ``x`` of token ``t``'s slot (``SB`` bytes
    copied in ``CK``-byte chunks at a stride of ``SP``) when the side is read as MMA fragments (expanded keys,
    values into the operand): :func:`~mustafar.kernels.decode_staged._copy_region`'s placement with ``FRAG``."""
    CPT: gl.constexpr = SB // CK
    if _swizzled(SB, SP, CK):
        RC: gl.constexpr = CPT if CPT > 8 else 8
        c = t * CPT + x // 16
        return (c ^ _row_xor(c // RC, CPT, True)) * 16 + x % 16
    return t * SP + x


@gluon.jit
def _expand_operand(words_off, vals_off, t, ch, n_tok, tab, ASM: gl.constexpr, DT: gl.constexpr, SB: gl.constexpr,
                    SP: gl.constexpr, CK: gl.constexpr, FP8: gl.constexpr, D: gl.constexpr, NM: gl.constexpr):  # fmt: skip
    """One expansion call per lane and register group: token ``t``'s 16 channels from ``ch`` (store order) of a
    staged side read as MMA fragments, kept four of every eight (``NM`` 4 or 8: the value of channel ch sits at
    ch // 2) or five of every sixteen as fp8 codes (``NM`` 16: the group's codes from byte 5·g, read as the slot
    word holding the first and the next), as the MMA's A operand (``ASM`` puts the pairs where the caller's layout
    says). Tokens at or past ``n_tok`` are zero."""
    waddr = words_off + t * (D // 8) + (ch // 32) * 4
    valid = (t < n_tok).to(gl.int32)
    if NM == 16:
        first = 5 * (ch // 16)
        vaddr = vals_off + _staged_at(t, (first // 4) * 4, SB, SP, CK)
        out = gl.inline_asm_elementwise(
            ASM,
            "=r,=r,=r,=r,=r,=r,=r,=r" + ",r" * 96,
            [waddr, vaddr, ch % 32, valid, tab, (first % 4) * 8],
            dtype=DT.value,
            is_pure=False,
            pack=16,
        )
    else:
        vaddr = vals_off + _staged_at(t, ch // 2 if FP8 else ch, SB, SP, CK)
        out = gl.inline_asm_elementwise(
            ASM,
            "=r,=r,=r,=r,=r,=r,=r,=r" + ",r" * 80,
            [waddr, vaddr, ch % 32, valid, tab],
            dtype=DT.value,
            is_pure=False,
            pack=16,
        )
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    return gl.convert_layout(out, gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2))


@gluon.jit
def _expand_k_half(words_off, vals_off, n_tok, HH: gl.constexpr, ASM: gl.constexpr, DT: gl.constexpr,
                   SB: gl.constexpr, SP: gl.constexpr, CK: gl.constexpr, FP8: gl.constexpr, D: gl.constexpr,
                   BLOCK_N: gl.constexpr, TAB: gl.constexpr, K_NM: gl.constexpr):  # fmt: skip
    """Channels ``64·HH .. 64·HH + 63`` (store order) of one staged expanded K side (``K_NM`` 8: four of every
    eight kept, :func:`~mustafar.kernels.scatter_ptx.expand8_frag_asm`; 16: five of every sixteen as fp8 codes,
    :func:`~mustafar.kernels.scatter_ptx.expand16_frag_asm`) as the scores' MMA operand [tokens, 64], expanded in
    registers: lane L holds tokens L div 4 + 8j and, for its K positions 2i, 2i + 1, 2i + 8, ... (i = L mod 4), the
    store's channels 64·HH + 16i .. + 15 in order (:func:`_q_frag` gives q the same order). Tokens at or past
    ``n_tok`` are zero; fp8 codes are selected through the table at shared byte ``TAB``
    (:func:`_fill_selector_table`)."""
    L: gl.constexpr = _k_frag_layout()
    t = gl.expand_dims(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, L)), 1)
    i = gl.expand_dims((gl.arange(0, 64, layout=gl.SliceLayout(0, L)) // 2) % 4, 0)
    ch = 64 * HH + 16 * i  # the lane's first channel, in the store's order
    tab = gl.full([BLOCK_N, 64], TAB, gl.int32, layout=L)
    return _expand_operand(words_off, vals_off, t, ch, n_tok, tab, ASM, DT, SB, SP, CK, FP8, D, K_NM)


@gluon.constexpr_function
def _vt_frag_layout():
    """The register layout of :func:`_expand_v_operand`'s Vᵀ [64 rows, 32 tokens]: the P·V MMA's A operand
    (``DotOperandLayout(0, mma, k_width=2)``) with its registers reordered so that each lane's ``FRAG_PACK``
    consecutive elements are one ``expand16_frag_asm(transposed=True)`` call; converting it to the operand moves
    no data. Row R = 8m + c holds the half's channel 16·(c div 2) + 2m + c mod 2 (:func:`_vt_rows_to_channels`)."""
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [8, 0], [16, 0], [32, 0], [0, 8], [0, 16]],
        lane_bases=[[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]],
        warp_bases=[],
        block_bases=[],
        shape=[64, 32],
    )


@gluon.jit
def _expand_v_operand(words_off, vals_off, n_tok, HH: gl.constexpr, ASM: gl.constexpr, DT: gl.constexpr,
                      SB: gl.constexpr, SP: gl.constexpr, CK: gl.constexpr, FP8: gl.constexpr, D: gl.constexpr,
                      TAB: gl.constexpr, V_NM: gl.constexpr):  # fmt: skip
    """Vᵀ of channels ``64·HH .. 64·HH + 63`` of one staged expanded V side (``V_NM`` 4: two of every four kept,
    read as four of eight; 16: five of sixteen, fp8 codes) as the P·V MMA's A operand [64, 32 tokens], rows in
    :func:`_vt_frag_layout`'s channel order: each lane expands its token (L div 4 + 8j) and 16 channels
    (16·(L mod 4) onwards) as the keys do, then ``movmatrix`` transposes the pairs across the warp
    (:func:`~mustafar.kernels.scatter_ptx.expand8_frag_asm` / ``expand16_frag_asm`` with ``transposed``). No row
    tile. Tokens at or past ``n_tok`` are zero."""
    L: gl.constexpr = _vt_frag_layout()
    row = gl.expand_dims(gl.arange(0, 64, layout=gl.SliceLayout(1, L)), 1)
    tok = gl.expand_dims(gl.arange(0, 32, layout=gl.SliceLayout(0, L)), 0)
    t = row % 8 + 8 * (tok // 8)  # the token this lane expands before the transpose
    ch = 64 * HH + 16 * ((tok // 2) % 4)  # its first channel
    tab = gl.full([64, 32], TAB, gl.int32, layout=L)
    return _expand_operand(words_off, vals_off, t, ch, n_tok, tab, ASM, DT, SB, SP, CK, FP8, D, V_NM)


@gluon.jit
def _pv_operand(words_off, vals_off, n_tok, p, acc_lo, acc_hi, ASM: gl.constexpr, VT: gl.constexpr,
                SB: gl.constexpr, SP: gl.constexpr, CK: gl.constexpr, FP8: gl.constexpr, D: gl.constexpr,
                TAB: gl.constexpr, V_NM: gl.constexpr):  # fmt: skip
    """``acc + Vᵀ p`` per 64-channel half with V expanded into the MMA's operand (:func:`_expand_v_operand`),
    P [tokens, heads] in ``VT``; then a barrier: every lane is done reading the staged V side before the ring
    reuses its slot."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    po = gl.convert_layout(p, op_b)
    acc_lo = mma_v2(
        _expand_v_operand(words_off, vals_off, n_tok, 0, ASM, VT, SB, SP, CK, FP8, D, TAB, V_NM), po, acc_lo
    )
    if D == 128:
        acc_hi = mma_v2(
            _expand_v_operand(words_off, vals_off, n_tok, 1, ASM, VT, SB, SP, CK, FP8, D, TAB, V_NM),
            po,
            acc_hi,
        )
    gl.thread_barrier()
    return acc_lo, acc_hi


@gluon.jit
def _vt_rows_to_channels(lo, hi, D: gl.constexpr, mma: gl.constexpr):
    """The accumulator halves of :func:`_expand_v_operand`'s MMAs ([64, heads] each, row R = 8m + 2a + b holding
    channel 16a + 2m + b of its half) as one [D, heads] accumulator in channel order; once per program."""
    H: gl.constexpr = lo.shape[1]
    out = gl.reshape(gl.permute(gl.reshape(lo, [8, 4, 2, H]), (1, 0, 2, 3)), [64, H])
    if D == 128:
        hi = gl.reshape(gl.permute(gl.reshape(hi, [8, 4, 2, H]), (1, 0, 2, 3)), [64, H])
        out = gl.reshape(gl.permute(gl.join(out, hi), (2, 0, 1)), [D, H])
    return gl.convert_layout(out, mma)


_STORE_SHARED_ASM: gl.constexpr = gl.constexpr(
    "{ .reg .b32 a; mov.u32 a, global_smem; add.u32 a, a, $1; st.shared.b32 [a], $2; mov.u32 $0, 0; }"
)


@gluon.jit
def _fill_selector_table(TAB: gl.constexpr):
    """Write the fp8 selector table at shared byte ``TAB``: for each of the 256 kept-bit patterns of eight
    channels, the ``prmt`` nibble of each position (its rank's code byte, or 7 where the position is not kept: a
    byte that is zero in the second source of every expansion reading it) at bit 4p: positions 0-3 in the low
    half-word, 4-7 in the high one (:func:`~mustafar.kernels.scatter_ptx.expand8_frag_asm` for a 4:8 group,
    :func:`~mustafar.kernels.scatter_ptx.expand16_frag_asm` for either half of a 5:16 one). Once per program,
    eight entries per lane; the loop's first barrier publishes it."""
    L: gl.constexpr = gl.BlockedLayout([8], [32], [1], [0])
    g = gl.arange(0, 256, layout=L)
    entry = gl.zeros([256], gl.int32, layout=L)
    rank = gl.zeros([256], gl.int32, layout=L)
    for p in gl.static_range(8):
        kept = (g >> p) & 1
        entry = entry | (gl.where(kept == 1, rank, 7) << (4 * p))
        rank = rank + kept
    gl.inline_asm_elementwise(
        _STORE_SHARED_ASM, "=r,r,r", [TAB + 4 * g, entry], dtype=gl.int32, is_pure=False, pack=1
    )


@gluon.jit
def _q_frag(q_ptr, order_row, sqb, sqh, b, h, HH: gl.constexpr, N_REP: gl.constexpr, D: gl.constexpr,
            BLOCK_H: gl.constexpr, PERM: gl.constexpr, ORDER: gl.constexpr):  # fmt: skip
    """qᵀ [64, heads] against :func:`_expand_k_half`'s operand for half ``HH``: K position k holds the store's
    position c = 64·HH + 16·((k div 2) mod 4) + 2·(k div 8) + k mod 2, which is q's channel c, or, for a strided
    store (``PERM`` M), channel (c mod M)·(D/M) + c div M, or, for a store with a per-head order (``ORDER``),
    channel ``order_row[c]`` (the program's (row, head) order, int32 [D])."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    k = gl.arange(0, 64, layout=gl.SliceLayout(1, op_b))
    rd = 64 * HH + 16 * ((k // 2) % 4) + 2 * (k // 8) + k % 2
    if PERM:
        rd = (rd % PERM) * (D // PERM) + rd // PERM
    if ORDER:
        rd = gl.load(order_row + rd)
    return _q_rows(q_ptr, sqb, sqh, b, h, rd, N_REP, BLOCK_H)


@gluon.jit
def _load_scales(at, BLOCK_N: gl.constexpr, LC: gl.constexpr):
    """The staged fp32 scales of a side's tokens (shared byte ``at``) in layout ``LC`` (the scores' token slice:
    no layout conversion, each lane reads the tokens of its rows)."""
    r = gl.arange(0, BLOCK_N, layout=LC)
    w = gl.inline_asm_elementwise(
        _LOAD_SHARED_ASM, "=r,r", [at + 4 * r], dtype=gl.int32, is_pure=False, pack=1
    )
    return w.to(gl.float32, bitcast=True)


@gluon.jit
def _q_half_scale(q_row, sqh, h: gl.constexpr, N_REP: gl.constexpr, D: gl.constexpr, LC: gl.constexpr):
    """The power of two 2^e that brings query head ``h``'s largest |q| to [B/2, B), B = ``HALF_SCORE_Q_BOUND``,
    and 2^-e: fp8 keys are scored against q·2^e in fp16 (:func:`~mustafar.kernels.scatter_ptx.score_asm`, or the
    expanded keys' MMA). Per head, so a head far below the group's largest keeps fp16's precision. Taken from the
    exponent bits, so exact; e is clamped to ±126, where both powers are normal fp32 (an all-zero q, or a head past
    the group, would ask 128; the largest finite fp32 q needs -126)."""
    c = gl.arange(0, 32, layout=LC)
    amax = gl.zeros([32], gl.float32, layout=LC)
    for w in gl.static_range(D // 32):
        amax = gl.maximum(
            amax, gl.abs(gl.load(q_row + h * sqh + 32 * w + c, mask=h < N_REP, other=0.0).to(gl.float32))
        )
    biased = (gl.max(amax, axis=0).to(gl.int32, bitcast=True) >> 23) & 0xFF  # max < 2^(biased - 126)
    e = gl.minimum(gl.maximum(_Q_EXP - biased, -126), 126)  # max · 2^e < the bound
    return ((e + 127) << 23).to(gl.float32, bitcast=True), ((127 - e) << 23).to(gl.float32, bitcast=True)


@gluon.jit
def _per_head(values, BLOCK_H: gl.constexpr, L: gl.constexpr):
    """The group's eight per-head scalars ``values`` as a [BLOCK_H] vector in layout ``L`` (1 past the eighth)."""
    hh = gl.arange(0, BLOCK_H, layout=L)
    out = gl.full([BLOCK_H], 1.0, gl.float32, layout=L)
    for i in gl.static_range(8):
        out = gl.where(hh == i, values[i], out)
    return out


@gluon.jit
def _q_pair(q_row, sqh, h0: gl.constexpr, word: gl.constexpr, N_REP: gl.constexpr, D: gl.constexpr,
            LC: gl.constexpr, scales, HALF: gl.constexpr):  # fmt: skip
    """Query heads ``h0``, ``h0 + 1`` of the group at channel ``32·word + lane``, packed in one 32-bit lane
    register (low half first; heads past the group and words past ``D`` are zero); ``HALF``: as fp16 times each
    head's entry of ``scales`` (:func:`_q_half_scale`), whatever q's dtype."""
    c = word * 32 + gl.arange(0, 32, layout=LC)
    lo = gl.load(q_row + h0 * sqh + c, mask=(c < D) & (h0 < N_REP), other=0.0)
    hi = gl.load(q_row + (h0 + 1) * sqh + c, mask=(c < D) & (h0 + 1 < N_REP), other=0.0)
    if HALF:
        lo = (lo.to(gl.float32) * scales[h0]).to(gl.float16)
        hi = (hi.to(gl.float32) * scales[h0 + 1]).to(gl.float16)
    lo = lo.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    return lo | (hi.to(gl.int16, bitcast=True).to(gl.int32) << 16)


@gluon.jit
def _score_side(words_off, vals_off, n_tok, qp, ASM: gl.constexpr, SB: gl.constexpr, D: gl.constexpr,
                BLOCK_N: gl.constexpr, LC: gl.constexpr):  # fmt: skip
    """Scores [tokens, 8 heads] of one staged K side, one token per lane (:func:`scatter_ptx.score_asm`); ``qp``
    the group's 16 query-pair lane registers (4 words x 4 pairs; zero past ``D``)."""
    G: gl.constexpr = D // 32
    r = gl.arange(0, BLOCK_N, layout=LC)
    s0, s1, s2, s3, s4, s5, s6, s7 = gl.inline_asm_elementwise(
        ASM,
        "=f,=f,=f,=f,=f,=f,=f,=f,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r",
        [words_off + r * (4 * G), vals_off + r * SB, (r < n_tok).to(gl.int32), qp[0], qp[1], qp[2], qp[3],
         qp[4], qp[5], qp[6], qp[7], qp[8], qp[9], qp[10], qp[11], qp[12], qp[13], qp[14], qp[15]],
        dtype=(gl.float32,) * 8,
        is_pure=False,
        pack=1,
    )  # fmt: skip
    return gl.reshape(_join8(s0, s1, s2, s3, s4, s5, s6, s7), [BLOCK_N, 8])  # head h at column h


@gluon.jit
def _pv(tile, p, acc, op_a: gl.constexpr, op_b: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr):
    """``acc + Vᵀ p`` over the dense tile's two 16-token halves (each Vᵀ [D, 16], the MMA's A operand as stored):
    the whole tile as one operand held 64 registers at D 128, which capped the resident warps at two per
    scheduler (round 10)."""
    H: gl.constexpr = BLOCK_N // 2
    p0, p1 = gl.split(gl.permute(gl.reshape(p, [2, H, p.shape[1]]), (1, 2, 0)))
    acc = mma_v2(tile.slice(0, D).load(op_a), gl.convert_layout(p0, op_b), acc)
    return mma_v2(tile.slice(D, D).load(op_a), gl.convert_layout(p1, op_b), acc)


@gluon.jit
def _pv8(tile, pw, acc, mma: gl.constexpr):
    """``acc + Vᵀ pw`` over the e4m3 tile: ldmatrix reads the codes (half the bytes of an fp16 tile), which are
    widened to fp16 in registers (exact) for fp16 MMAs with P in fp16, as before. Both operands use the 8-bit
    element order (``k_width=4``), so the widened codes need no layout conversion (an e4m3 MMA would need P in
    e4m3, and sm_90 runs ``mma.sync`` e4m3 as these same conversions plus fp16 MMAs)."""
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=4)
    return mma_v2(tile.load(op_a).to(gl.float16), gl.convert_layout(pw.to(gl.float16), op_b), acc)


@gluon.jit
def _sc_sparse_decode_kernel(
    q_ptr,
    k_bits,
    k_vals,
    v_bits,
    v_vals,
    k_scales,
    v_scales,
    k_order,
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
    K_SB: gl.constexpr,
    V_SB: gl.constexpr,
    K_SP: gl.constexpr,
    V_SP: gl.constexpr,
    K_CK: gl.constexpr,
    V_CK: gl.constexpr,
    K_FP8: gl.constexpr,
    V_FP8: gl.constexpr,
    BLOCK_H: gl.constexpr,
    BLOCK_N: gl.constexpr,
    SMEM_WORDS: gl.constexpr,
    K_CH_P2: gl.constexpr,
    V_CH_P2: gl.constexpr,
    DEVICE_LEN: gl.constexpr,
    K_ASM: gl.constexpr,
    V_ASM: gl.constexpr,
    SIDES: gl.constexpr,
    SLOT_BYTES: gl.constexpr,
    V_NM: gl.constexpr,
    K_NM: gl.constexpr,
    K_PERM: gl.constexpr,
    K_ORDER: gl.constexpr,
    V_OP: gl.constexpr,
    PDL: gl.constexpr,
):
    G: gl.constexpr = D // 32
    DT: gl.constexpr = q_ptr.dtype.element_ty
    # the dense V tile: fp8 codes as stored when scattered, widened to fp16 when rows are expanded
    VT: gl.constexpr = (gl.float16 if V_NM else gl.float8e4nv) if V_FP8 else DT
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    lc: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    # the PTX addresses shared memory from global_smem. The dense tile (a power of two: Gluon's layouts need one)
    # and the ring (exact: :func:`mustafar.kernels.decode._scatter_ring`, never the tile's size) are two
    # allocations; the allocator puts the larger first. Values expanded into the P·V operand need no tile (8 KB
    # per program at D 128 that would only shrink L1): the ring is then the only one
    TILE_W: gl.constexpr = 0 if V_OP else BLOCK_N * D * VT.primitive_bitwidth // 32
    flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    smem = gl.allocate_shared_memory(gl.int32, [SMEM_WORDS], flat)
    REGION: gl.constexpr = 0 if SMEM_WORDS > TILE_W else 4 * TILE_W
    TILE_OFF: gl.constexpr = 4 * SMEM_WORDS if SMEM_WORDS > TILE_W else 0
    if not V_OP:
        tbuf = gl.allocate_shared_memory(gl.int32, [TILE_W], flat)
        if V_NM:
            tile = tbuf._reinterpret(VT, [BLOCK_N, D], _v_rows_layout())
        elif V_FP8:
            tile = tbuf._reinterpret(VT, [D, BLOCK_N], _vt8_tile_layout(D))
        else:
            tile = tbuf._reinterpret(VT, [2 * D, BLOCK_N // 2], _vt_tile_layout(D))

    b = gl.program_id(0)
    h = gl.program_id(1)
    s = gl.program_id(2)
    m_i, l_i = _softmax_state(BLOCK_H)
    acc = gl.zeros([D, BLOCK_H], gl.float32, layout=mma)  # (Vᵀ p) [D, heads]
    if V_OP:  # values expanded into the MMA's operand: one accumulator per 64-channel half, rows permuted
        acc_lo = gl.zeros([64, BLOCK_H], gl.float32, layout=mma)
        acc_hi = gl.zeros([64, BLOCK_H], gl.float32, layout=mma)
    if V_FP8:  # acc holds (Vᵀ p) / frame, frame the last tile's largest V scale (a power of two: exact)
        frame = gl.max(gl.full([BLOCK_N], 1.0, gl.float32, layout=gl.SliceLayout(1, mma)), axis=0)
    q_row = q_ptr + b.to(gl.int64) * sqb + (h * N_REP).to(gl.int64) * sqh
    TAB: gl.constexpr = REGION + SIDES * SLOT_BYTES  # fp8 expanded keys: the selector table after the ring
    if (K_NM and K_FP8) or V_NM == 16 or (V_OP and V_FP8):
        _fill_selector_table(TAB)
    # fp8 keys are scored in fp16 against q scaled per head by a power of two; the score multiply divides it out
    k_fold = qk_scale
    q_scales = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    if K_FP8:
        s0, i0 = _q_half_scale(q_row, sqh, 0, N_REP, D, lc)
        s1, i1 = _q_half_scale(q_row, sqh, 1, N_REP, D, lc)
        s2, i2 = _q_half_scale(q_row, sqh, 2, N_REP, D, lc)
        s3, i3 = _q_half_scale(q_row, sqh, 3, N_REP, D, lc)
        s4, i4 = _q_half_scale(q_row, sqh, 4, N_REP, D, lc)
        s5, i5 = _q_half_scale(q_row, sqh, 5, N_REP, D, lc)
        s6, i6 = _q_half_scale(q_row, sqh, 6, N_REP, D, lc)
        s7, i7 = _q_half_scale(q_row, sqh, 7, N_REP, D, lc)
        q_scales = (s0, s1, s2, s3, s4, s5, s6, s7)
        k_fold = _per_head((i0, i1, i2, i3, i4, i5, i6, i7), BLOCK_H, gl.SliceLayout(0, mma)) * qk_scale
    if K_NM:  # qᵀ as the scores' MMA operand in two halves (D 128), its channels in the K operand's order
        order_row = k_order + (b.to(gl.int64) * heads_kv + h) * D
        qk0 = _q_frag(q_ptr, order_row, sqb, sqh, b, h, 0, N_REP, D, BLOCK_H, K_PERM, K_ORDER)
        if D == 128:
            qk1 = _q_frag(q_ptr, order_row, sqb, sqh, b, h, 1, N_REP, D, BLOCK_H, K_PERM, K_ORDER)
        if K_FP8:  # the widened codes are fp16, q too: scaled, so bf16 queries of any magnitude fit
            qsv = gl.expand_dims(_per_head(q_scales, BLOCK_H, gl.SliceLayout(0, op_b)), 0)
            qk0 = (qk0.to(gl.float32) * qsv).to(gl.float16)
            if D == 128:
                qk1 = (qk1.to(gl.float32) * qsv).to(gl.float16)
    HALF: gl.constexpr = K_FP8 and not K_NM  # the key walk's q pairs in fp16, scaled
    qp = (
        _q_pair(q_row, sqh, 0, 0, N_REP, D, lc, q_scales, HALF), _q_pair(q_row, sqh, 2, 0, N_REP, D, lc, q_scales, HALF),
        _q_pair(q_row, sqh, 4, 0, N_REP, D, lc, q_scales, HALF), _q_pair(q_row, sqh, 6, 0, N_REP, D, lc, q_scales, HALF),
        _q_pair(q_row, sqh, 0, 1, N_REP, D, lc, q_scales, HALF), _q_pair(q_row, sqh, 2, 1, N_REP, D, lc, q_scales, HALF),
        _q_pair(q_row, sqh, 4, 1, N_REP, D, lc, q_scales, HALF), _q_pair(q_row, sqh, 6, 1, N_REP, D, lc, q_scales, HALF),
        _q_pair(q_row, sqh, 0, 2, N_REP, D, lc, q_scales, HALF), _q_pair(q_row, sqh, 2, 2, N_REP, D, lc, q_scales, HALF),
        _q_pair(q_row, sqh, 4, 2, N_REP, D, lc, q_scales, HALF), _q_pair(q_row, sqh, 6, 2, N_REP, D, lc, q_scales, HALF),
        _q_pair(q_row, sqh, 0, 3, N_REP, D, lc, q_scales, HALF), _q_pair(q_row, sqh, 2, 3, N_REP, D, lc, q_scales, HALF),
        _q_pair(q_row, sqh, 4, 3, N_REP, D, lc, q_scales, HALF), _q_pair(q_row, sqh, 6, 3, N_REP, D, lc, q_scales, HALF),
    )  # fmt: skip

    bh = b.to(gl.int64) * heads_kv + h
    kb_row = k_bits + bh * k_cap * G
    vb_row = v_bits + bh * v_cap * G
    kv_row = k_vals + bh * k_cap * (K_SB // 4)
    vv_row = v_vals + bh * v_cap * (V_SB // 4)
    ks_row = k_scales + bh * k_cap
    vs_row = v_scales + bh * v_cap
    if DEVICE_LEN:
        T = gl.minimum(gl.minimum(gl.load(k_len + b), gl.load(v_len + b)), T)
    start = s * tokens_per_split
    end = gl.minimum(start + tokens_per_split, T)
    ts_l: gl.constexpr = gl.SliceLayout(1, mma)
    # the ring holds SIDES slots, side n (K of tile n // 2 when n is even, else its V) in slot n % SIDES; before
    # side n is decoded, side n + SIDES - 1 is issued into the slot side n - 1 just left
    WB: gl.constexpr = BLOCK_N * G * 4
    for j in gl.static_range(SIDES - 1):
        if j % 2 == 0:
            _issue_side(REGION + j * SLOT_BYTES, kb_row, kv_row, ks_row, start + (j // 2) * BLOCK_N, end, G, K_SB,
                        K_SP, K_CK, K_FP8, BLOCK_N, K_CH_P2, lc, K_NM > 0)  # fmt: skip
        else:
            _issue_side(REGION + j * SLOT_BYTES, vb_row, vv_row, vs_row, start + (j // 2) * BLOCK_N, end, G, V_SB,
                        V_SP, V_CK, V_FP8, BLOCK_N, V_CH_P2, lc, V_OP)  # fmt: skip
    # the slots of sides n, n + 1 and n + SIDES - 1, carried and rotated (n grows by 2 per tile), where computing
    # n mod SIDES took a multiply-high division per use
    gl.static_assert(SIDES == 2 or SIDES == 3, "the ring rotates two or three sides")
    slot_n = REGION
    slot_n1 = REGION + SLOT_BYTES
    slot_last = REGION + (SIDES - 1) * SLOT_BYTES
    for t0 in range(start, end, BLOCK_N):
        ahead = slot_last
        if SIDES % 2 == 1:  # side n + SIDES - 1 is a K side
            _issue_side(
                ahead, kb_row, kv_row, ks_row, t0 + (SIDES // 2) * BLOCK_N, end, G, K_SB, K_SP, K_CK, K_FP8, BLOCK_N,
                K_CH_P2, lc, K_NM > 0,
            )  # fmt: skip
        else:
            _issue_side(
                ahead, vb_row, vv_row, vs_row, t0 + (SIDES // 2 - 1) * BLOCK_N, end, G, V_SB, V_SP, V_CK, V_FP8,
                BLOCK_N, V_CH_P2, lc, V_OP,
            )  # fmt: skip
        async_copy.wait_group(SIDES - 1)
        gl.thread_barrier()  # K of this tile staged; every lane is done reading the dense tile (last P·V)
        n_tok = end - t0
        k_off = slot_n
        if K_NM:  # K expanded straight into the MMA's registers, 64 channels at a time
            KT: gl.constexpr = gl.float16 if K_FP8 else DT
            sc = mma_v2(
                _expand_k_half(
                    k_off, k_off + WB, n_tok, 0, K_ASM, KT, K_SB, K_SP, K_CK, K_FP8, D, BLOCK_N, TAB, K_NM
                ),
                qk0,
                gl.zeros([BLOCK_N, BLOCK_H], gl.float32, layout=mma),
            )
            if D == 128:
                sc = mma_v2(
                    _expand_k_half(
                        k_off, k_off + WB, n_tok, 1, K_ASM, KT, K_SB, K_SP, K_CK, K_FP8, D, BLOCK_N, TAB, K_NM
                    ),
                    qk1,
                    sc,
                )
        else:
            sc = gl.convert_layout(
                _score_side(k_off, k_off + WB, n_tok, qp, K_ASM, K_SP, D, BLOCK_N, lc), mma
            )
        sc_scale = qk_scale
        if K_FP8:
            # the codes' scores times each token's scale (staged after its value slots) and each head's qk_scale
            # over q's scale (exact but for qk_scale's own rounding: the scales are powers of two)
            ks = _load_scales(k_off + WB + BLOCK_N * K_SP, BLOCK_N, ts_l)
            sc = sc * (gl.expand_dims(ks, 1) * gl.expand_dims(k_fold, 0))
            sc_scale = 1.0
        ts = t0 + gl.arange(0, BLOCK_N, layout=ts_l)
        if V_FP8 or V_OP:  # the accumulator's rescale waits (V's scales: the frame change folds into it)
            p, m_i, l_i, alpha = _softmax_probs(sc, ts < end, m_i, l_i, sc_scale)
        else:
            p, m_i, l_i, acc = _softmax_step(sc, ts < end, m_i, l_i, acc, sc_scale)
        ahead = slot_n  # side n + SIDES: the slot side n (K, scored) just left
        if SIDES % 2 == 1:  # side n + SIDES is a V side
            _issue_side(
                ahead, vb_row, vv_row, vs_row, t0 + (SIDES // 2) * BLOCK_N, end, G, V_SB, V_SP, V_CK, V_FP8, BLOCK_N,
                V_CH_P2, lc, V_OP,
            )  # fmt: skip
        else:
            _issue_side(
                ahead, kb_row, kv_row, ks_row, t0 + (SIDES // 2) * BLOCK_N, end, G, K_SB, K_SP, K_CK, K_FP8, BLOCK_N,
                K_CH_P2, lc, K_NM > 0,
            )  # fmt: skip
        async_copy.wait_group(SIDES - 1)
        gl.thread_barrier()  # V staged; every lane is done reading the K tile
        v_off = slot_n1
        if V_OP:
            pass  # expanded into the operand below, after P
        elif V_NM:
            _expand_side(v_off, v_off + WB, n_tok, V_ASM, V_SP, D, BLOCK_N, TILE_OFF, lc)
        else:
            _scatter_side(tile, v_off, v_off + WB, n_tok, V_ASM, VT, V_SP, D, BLOCK_N, TILE_OFF, lc)
        if V_FP8:
            # P weighs the unscaled codes by each token's scale relative to the tile's largest, so fp16 P keeps its
            # precision; the accumulator moves to that scale's frame in the softmax's own rescale (one multiply
            # per tile where dividing and multiplying back took three: round 17). The scales are powers of two, so
            # one reciprocal of the largest is exact and its products equal the quotients
            at = v_off + WB + BLOCK_N * V_SP
            vsc = gl.where(gl.arange(0, BLOCK_N, layout=ts_l) < n_tok, _load_scales(at, BLOCK_N, ts_l), 0.0)
            top = gl.max(vsc, axis=0)
            inv_top = 1.0 / top
            pw = p * gl.expand_dims(vsc * inv_top, 1)
            rescale = gl.expand_dims(alpha * (frame * inv_top), 0)
            frame = top
            if V_OP:
                acc_lo, acc_hi = _pv_operand(v_off, v_off + WB, n_tok, pw.to(gl.float16), acc_lo * rescale,
                                             acc_hi * rescale, V_ASM, gl.float16, V_SB, V_SP, V_CK, V_FP8, D, TAB,
                                             V_NM)  # fmt: skip
            elif V_NM:
                acc = _pv_rows(tile, pw.to(gl.float16), acc * rescale, op_a, op_b, BLOCK_N)
            else:
                acc = _pv8(tile, pw, acc * rescale, mma)
        elif V_OP:
            rescale = gl.expand_dims(alpha, 0)
            acc_lo, acc_hi = _pv_operand(v_off, v_off + WB, n_tok, p.to(DT), acc_lo * rescale, acc_hi * rescale,
                                         V_ASM, DT, V_SB, V_SP, V_CK, V_FP8, D, TAB, V_NM)  # fmt: skip
        elif V_NM:
            acc = _pv_rows(tile, p.to(DT), acc, op_a, op_b, BLOCK_N)
        else:
            acc = _pv(tile, p.to(DT), acc, op_a, op_b, BLOCK_N, D)
        if SIDES == 3:  # sides n + 2, n + 3, n + 4 sit where n + 2, n, n + 1 did
            slot_n, slot_n1, slot_last = slot_last, slot_n, slot_n1
    async_copy.wait_group(0)
    smem._keep_alive()
    if V_OP:
        acc = _vt_rows_to_channels(acc_lo, acc_hi, D, mma)
    else:
        tbuf._keep_alive()
    if V_FP8:
        acc = acc * frame
    # q's MMA tile is loaded for the dense window only now: held through the loop it took 16 registers, and
    # moving it measured 2-4 % faster together with the transposed tile (results/kernels/NOTES.md, round 11)
    qt = _q_tile(q_ptr, sqb, sqh, b, h, N_REP, D, BLOCK_H)
    _finish(
        kw_ptr, vw_ptr, o_ptr, lse_ptr, qt, m_i, l_i, acc, b, h, s, num_splits, skwb, skwh, skwt, svwb, svwh,
        svwt, heads_kv, W_WIN, qk_scale, N_REP, D, BLOCK_H, BLOCK_N, PDL,
    )  # fmt: skip
