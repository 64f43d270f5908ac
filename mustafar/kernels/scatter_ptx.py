"""The scatter decoder's per-lane PTX and the word quotas it relies on (import-light: no Triton). Besides the
walk below, stores with fixed groups are expanded instead: values into dense rows (:func:`expand_asm`), keys
straight into the scores' MMA operand (:func:`expand8_frag_asm`); which stores, :func:`expands_values` and
:func:`expands_keys`.

Stores packed under the ``word`` keep rule (``CompressedStore(..., word_quota=True)``) keep a fixed, known number
of entries ``q_g`` in every 32-channel bitmap word (:func:`mustafar.pruning.keep.word_quotas`), so a lane that owns
one token can walk exactly its kept bits with trip counts known at compile time: for word ``g``, ``q_g`` times the
highest set bit (``bfind``), clear it, store the matching value (walking down: slot ``first_g + q_g - 1 - step``)
at its address in the dense tile. About six instructions per *kept* value, where the staged decoder's walk
costs about five per *dense* element.

The tile holds Vᵀ of the 32 tokens as four [D, 8] blocks of 8 tokens with 16-byte rows
(:func:`mustafar.kernels.decode_scatter._vt_tile_layout`): token r's channel c sits at byte
``16·D·k + 16·(c XOR 4·(k mod 2)) + 2·(r mod 8)`` with ``k = r div 8``, two instructions per kept value (``xor``,
``mad``). A lane owns one column, so the 32 lanes' stores of a step land on banks set by their token more than by
their random channels; the XOR moves odd blocks' stores to other banks, and ldmatrix's eight rows stay one
contiguous 128 bytes. tests/kernels/test_scatter_ptx.py runs the PTX on the CPU against this formula and checks
that it is the layout the kernel gives Gluon; the GPU tests check Gluon's reading of that layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from mustafar.formats.bitmap import CompressedStore
from mustafar.pruning.keep import word_quotas

TOKENS_PER_TILE = 32  # one token per lane of the decoder's single warp
NM16_CODES = 5  # codes per 16-channel group that the 5:16 expansions read: keep 5·D/16 (s 0.6875)


def store_quotas(store: CompressedStore) -> tuple[int, ...] | None:
    """The store's per-word quotas when it guarantees them (fixed layout, ``word_quota``), else None."""
    if not getattr(store, "word_quota", False) or store.keep is None:
        return None
    return word_quotas(store.head_dim, store.keep)


def _nm16_fp8(store: CompressedStore) -> bool:
    """Five of every sixteen consecutive channels kept as fp8 codes: the stores the 5:16 expansions read."""
    return store.nm_group == 16 and store.fp8 and store.keep == NM16_CODES * store.head_dim // 16


def value_group(store: CompressedStore) -> int:
    """The group size of the V stores whose rows the scatter decoder expands in registers instead of scattering
    their values, else 0: 4, two of every four consecutive channels kept (fp16/bf16 values into an fp16 tile,
    :func:`expand_asm`; fp8 codes into the P·V operand, :func:`expand8_frag_asm` ``transposed``), or 16, five of
    every sixteen as fp8 codes (into the operand, :func:`expand16_frag_asm` ``transposed``); in channel order (a
    strided or per-head order would come out permuted)."""
    if store.nm_strided or store.head_order is not None:
        return 0
    if store.nm_group == 4 and store.keep == expand_keep(store.head_dim):
        return 4
    return 16 if _nm16_fp8(store) else 0


def expands_values(store: CompressedStore) -> bool:
    """Whether the scatter decoder expands this V store's rows in registers (:func:`value_group`)."""
    return value_group(store) > 0


def key_group(k_store: CompressedStore, v_store: CompressedStore) -> int:
    """The group size of the K stores the scatter decoder expands into the scores' MMA operand and scores with
    MMAs instead of walking their bits, else 0: 8, four of every eight channels kept (:func:`expand8_frag_asm`),
    or 16, five of every sixteen as fp8 codes (:func:`expand16_frag_asm`); in the store's order (consecutive,
    strided under a fixed permutation, or per head: q is loaded in the same order), with V's rows expanded too
    and of the same value type (fp16/bf16 values, or fp8 codes on both sides: one ``value_dtype`` for both, as
    a ``KVConfig`` builds them)."""
    if k_store.fp8 != v_store.fp8 or not expands_values(v_store):
        return 0
    if k_store.nm_group == 8 and k_store.keep == expand_keep(k_store.head_dim):
        return 8
    return 16 if _nm16_fp8(k_store) else 0


def expands_keys(k_store: CompressedStore, v_store: CompressedStore) -> bool:
    """Whether the scatter decoder expands this K store into the scores' MMA operand (:func:`key_group`)."""
    return key_group(k_store, v_store) > 0


CHUNK_VALUES = 8  # values per staged load: one 16-byte vector of fp16/bf16, one 8-byte vector of fp8 codes


def _load_words(words: int, words_at: str, vals_at: str) -> list[str]:
    """PTX loading a valid (``p``) token's bitmap words into ``w*`` and pointing ``va`` at its value slots (shared
    byte offsets ``words_at``, ``vals_at`` from ``global_smem`` in ``base``)."""
    wvec = "{" + ", ".join(f"w{g}" for g in range(words)) + "}"
    return [
        f"add.u32 t, base, {words_at};",
        f"@p ld.shared.v{words}.b32 {wvec}, [t];" if words > 1 else "@p ld.shared.b32 w0, [t];",
        f"add.u32 va, base, {vals_at};",
    ]


def swizzled_slots(slot_bytes: int, chunk: int) -> bool:
    """Whether staged slots of ``slot_bytes`` in ``chunk``-byte copies are stored unpadded and XOR-swizzled by
    16-byte chunk within 128-byte rows: whole 128-byte slots (token t's chunk k at chunk k XOR (t mod 8) of its
    rows), or 32- and 64-byte slots, four or two tokens to a row (the row's chunk j at j XOR (row mod 8)). Each
    copied line then lands in one shared row, and a lane's loads of its own slot still spread over all the banks
    (padding the stride to an odd number of chunks did that at two to three times the copies' wavefronts:
    results/kernels/NOTES.md, rounds 13 and 18)."""
    return chunk == 16 and (slot_bytes % 128 == 0 or slot_bytes in (32, 64))


def row_xor(row: int, slot_bytes: int, fragments: bool = False) -> int:
    """The chunk XOR of swizzled 128-byte row ``row`` (:func:`swizzled_slots`): row mod 8 for sides whose lanes
    read their own token's slot. Sides read as MMA fragments (expanded keys, values into the P·V operand) have
    each load take a few bytes of several tokens: at D 128 two rows' tokens share a load phase and, under row mod 8,
    pairs of rows fold onto the same banks (2-way conflicts on every code load). Rotating the row's three bits
    (left for 64-byte slots, right for 128-byte ones) makes the rows one phase pairs differ in the bit that moves
    their chunks apart (results/kernels/NOTES.md, round 24)."""
    r = row % 8
    if fragments and slot_bytes == 64:
        return ((r << 1) | (r >> 2)) & 7
    if fragments and slot_bytes == 128:
        return ((r >> 1) | (r << 2)) & 7
    return r


def _lane_swizzle() -> list[str]:
    """``xs`` = 16·(lane mod 8): the byte XOR of a lane's chunk offsets in its 128-byte tile row (lane = token)."""
    return ["mov.u32 xs, %laneid;", "and.b32 xs, xs, 7;", "shl.b32 xs, xs, 4;"]


def _slot_swizzle(slot_bytes: int) -> list[str]:
    """PTX setting ``xv``, the byte XOR of the lane's chunk offsets in its swizzled slot (:func:`swizzled_slots`;
    lane = token), after ``va`` points at the slot. Slots smaller than a row share it with their row's other
    tokens: ``va`` moves back to the row's start and ``xv`` also carries the slot's place in the row (chunk
    offsets and that place use different address bits, so one XOR does both; scratch: ``ca``)."""
    if slot_bytes % 128 == 0:
        return ["mov.u32 xv, %laneid;", "and.b32 xv, xv, 7;", "shl.b32 xv, xv, 4;"]
    per_row = 128 // slot_bytes
    return [
        "mov.u32 xv, %laneid;",
        f"and.b32 ca, xv, {per_row - 1};",
        f"shr.b32 xv, xv, {per_row.bit_length() - 1};",
        "and.b32 xv, xv, 7;",
        "shl.b32 xv, xv, 4;",
        f"shl.b32 ca, ca, {slot_bytes.bit_length() - 1};",
        "xor.b32 xv, xv, ca;",
        "sub.u32 va, va, ca;",
    ]


def _staged_slot(slot: int, fp8: bool) -> tuple[list[str], bool]:
    """For a lane whose ``va`` points at its staged slot of ``slot`` values: the PTX that prepares the swizzled
    loads (:func:`_slot_swizzle`, nothing where the slot is not swizzled) and whether it is swizzled."""
    slot_bytes = slot if fp8 else 2 * slot
    swizzled = swizzled_slots(slot_bytes, 16)
    return (_slot_swizzle(slot_bytes) if swizzled else []), swizzled


def _slot_load(vec: str, offset: int, swizzled: bool, pred: bool = True) -> list[str]:
    """PTX loading ``vec`` from byte ``offset`` of the lane's staged slot (at most 16 bytes, inside one chunk)."""
    at = "@p " if pred else ""
    width = vec.count(",") + 1
    op = f"ld.shared.v{width}.b32" if width > 1 else "ld.shared.b32"
    if not swizzled:
        return [f"{at}{op} {vec}, [va+{offset}];"]
    chunk, within = offset // 16 * 16, offset % 16
    return [f"xor.b32 ca, xv, {chunk};", "add.u32 ca, va, ca;", f"{at}{op} {vec}, [ca+{within}];"]


def _load_chunk(c: int, regs: int, fp8: bool, swizzled: bool = False, pair: str = "lo, hi") -> list[str]:
    """PTX loading value chunk ``c`` (values ``8c .. 8c + 7``) of a valid token into the 16-bit pair registers
    ``v4c .. v4c+3``; fp8 codes are loaded into ``e*`` and widened to fp16 pairs (``cvt.rn.f16x2.e4m3x2``: byte 2i
    of a half-word pair to the low half), unscaled, through the two 16-bit registers ``pair``."""
    if not fp8:
        return _slot_load("{" + ", ".join(f"v{4 * c + k}" for k in range(4)) + "}", 16 * c, swizzled)
    lines = _slot_load(f"{{e{2 * c}, e{2 * c + 1}}}", 8 * c, swizzled)
    lo, hi = pair.split(", ")
    for i in range(4 * c, min(4 * c + 4, regs)):
        if i % 2 == 0:
            lines.append(f"mov.b32 {{{pair}}}, e{i // 2};")
        lines.append(f"cvt.rn.f16x2.e4m3x2 v{i}, {hi if i % 2 else lo};")
    return lines


def _chunks_before_word(quotas: tuple[int, ...], load: Callable[[int], list[str]]) -> list[list[str]]:
    """Per bitmap word, the loads (``load(c)``: the PTX loading value chunk ``c``) of the chunks its walk is the
    first to read: a chunk is loaded just before its first use rather than the whole slot up front, so only about a
    word's values need to be live at once (round 10 measured this together with the P·V halves: 1-3 % faster on
    the H200, not separately)."""
    loaded: set[int] = set()
    out, first = [], 0
    for q in quotas:
        lines = []
        for c in range(first // CHUNK_VALUES, (first + q - 1) // CHUNK_VALUES + 1 if q else 0):
            if c not in loaded:
                loaded.add(c)
                lines += load(c)
        out.append(lines)
        first += q
    return out


def _fp8_regs(regs: int) -> str:
    """Declarations of the fp8 slot registers behind ``regs`` fp16-pair registers (rounded to whole loads)."""
    return f".reg .b32 e<{2 * -(-regs // 4)}>;"


def _value_regs(keep: int, slot: int, fp8: bool) -> int:
    """32-bit registers holding a token's values as 16-bit pairs: the whole slot (fp16/bf16) or, fp8, its kept
    codes widened (the padding after ``keep`` is never read)."""
    return -(-keep // 2) if fp8 else slot // 2


@functools.cache
def scatter_asm(head_dim: int, keep: int, slot: int, fp8: bool = False) -> str:
    """PTX that scatters one token's kept values into its column of a zeroed dense Vᵀ tile.

    Operands: ``$0`` a dummy output; ``$1`` the token's bitmap words and ``$2`` its value slots (byte offsets in
    the kernel's shared allocation); ``$3`` the byte offset of the lane's column in the tile; ``$4`` its block's
    channel XOR; ``$5`` nonzero when the token is valid (invalid lanes store nothing). Both tiles have 16-byte
    rows, so channel c of word g sits at ``$3 + 512·g + 16·(i XOR $4)``. fp16/bf16: ``$3 = tile + 16·D·k +
    2·(r mod 8)``, ``$4 = 4·(k mod 2)`` with ``k = r div 8`` (:func:`mustafar.kernels.decode_scatter._vt_tile_layout`).
    ``fp8``: the slot holds e4m3 codes (``slot`` bytes), stored unconverted, one byte each, into the e4m3 tile
    (``$3 = tile + 16·D·k + r mod 16``, ``$4 = 4·k`` with ``k = r div 16``: ``_vt8_tile_layout``); the caller
    weighs P by the scales."""
    quotas = word_quotas(head_dim, keep)
    words = head_dim // 32
    regs = -(-slot // 4) if fp8 else _value_regs(keep, slot, fp8)  # fp8: the codes, four per register
    lines = [
        "{",
        ".reg .pred p;",
        f".reg .b32 w<{words}>, {'e' if fp8 else 'v'}<{regs}>, i, m, t, a, s, x, va, base, row, xv, ca;",
        *([] if fp8 else [".reg .b16 lo, hi;"]),
        "setp.ne.u32 p, $5, 0;",
        "mov.u32 base, global_smem;",
        *_load_words(words, "$1", "$2"),
        "add.u32 row, base, $3;",
    ]
    swizzle, swizzled = _staged_slot(slot, fp8)
    lines += swizzle
    loads = _chunks_before_word(
        quotas,
        functools.partial(_code_load, swizzled=swizzled)
        if fp8
        else functools.partial(_load_chunk, regs=regs, fp8=fp8, swizzled=swizzled),
    )
    first = 0
    for g, q in enumerate(quotas):
        lines += loads[g]
        lines.append(f"add.u32 s, row, {16 * 32 * g};")
        for step in range(q):
            j = first + q - 1 - step
            lines += [
                f"bfind.u32 i, w{g};",
                "shl.b32 m, 1, i;",
                f"xor.b32 w{g}, w{g}, m;",
                "xor.b32 t, i, $4;",
                "mad.lo.u32 a, t, 16, s;",
            ]
            if fp8:  # code j is byte j mod 4 of e[j div 4]; st.b8 stores a register's low byte
                byte = j % 4
                src = "x" if byte else f"e{j // 4}"
                lines += [f"shr.b32 x, e{j // 4}, {8 * byte};"] if byte else []
                lines.append(f"@p st.shared.b8 [a], {src};")
            else:
                lines += [
                    f"mov.b32 {{lo, hi}}, v{j // 2};",
                    f"@p st.shared.b16 [a], {'hi' if j % 2 else 'lo'};",
                ]
        first += q
    lines += ["mov.u32 $0, 0;", "}"]
    return "\n".join(lines)


# Selector bytes of the two-of-four expansion, indexed by the kept bits of a group's two position pairs. A group's
# two values sit in one 32-bit register (the first kept in the low half), byte pair 0x10 = its low value, 0x32 = its
# high value, 0x44 = the zero register's bytes. Pair (0, 1) by i = b0 + 2·b1: position 0 from byte i of ``_LO0``,
# position 1 from byte i of ``_LO1``; pair (2, 3) by j = b2 + 2·b3 from ``_HI2``/``_HI3``: with two kept per group, a
# lone kept position 2 or 3 is the group's second value.
_LO0, _LO1, _HI2, _HI3 = 0x10441044, 0x32104444, 0x10443244, 0x32324444


def expand_keep(head_dim: int) -> int:
    """The keep of the stores :func:`expand_asm` reads: two of every four consecutive channels."""
    return head_dim // 2


def _row_setup(name: str, head_dim: int, slot: int, fp8: bool) -> tuple[list[str], bool, int]:
    """The row expansions' common start after their register declarations: check the slot holds half the head dim,
    read the valid flag, zero the words (an invalid token expands to a zero row), load a valid token's words,
    point ``va`` at its slots and ``row`` at its tile row, set the row tile's and the slot's XORs. Returns those
    lines, whether the slot is swizzled and the value registers to declare (fp8: every chunk's widened pairs;
    fp16/bf16: one chunk's, reloaded)."""
    if head_dim % 32 or slot * 2 < head_dim:
        raise ValueError(
            f"{name} needs head_dim a multiple of 32 and a slot of head_dim/2, got {head_dim}, {slot}"
        )
    words = head_dim // 32
    swizzle, swizzled = _staged_slot(slot, fp8)
    lines = [
        "setp.ne.u32 p, $4, 0;",
        "mov.u32 base, global_smem;",
        "mov.u32 zero, 0;",
        *(f"mov.b32 w{g}, 0;" for g in range(words)),
        *_load_words(words, "$1", "$2"),
        "add.u32 row, base, $3;",
        *_lane_swizzle(),
        *swizzle,
    ]
    return lines, swizzled, head_dim // 4 if fp8 else 4


def _store_row_chunk(k: int) -> list[str]:
    """Store ``o0 .. o3`` as 16-byte chunk ``k`` of the token's tile row (at chunk k XOR (row mod 8))."""
    return [f"xor.b32 ca, xs, {16 * k};", "add.u32 ca, row, ca;", "st.shared.v4.b32 [ca], {o0, o1, o2, o3};"]


def _load_rows_chunk(c: int, swizzled: bool) -> list[str]:
    """PTX loading fp16/bf16 value chunk ``c`` into ``v0 .. v3`` for the row expansions: unpredicated (an invalid
    token's zero words select no value) and into the same four registers each time, which measured fewer spills
    and instructions than predicated loads into one register set per chunk (offline sm_90: 49.3 against 51.5
    instructions per token-head)."""
    return _slot_load("{v0, v1, v2, v3}", 16 * c, swizzled, pred=False)


@functools.cache
def expand_asm(head_dim: int, slot: int, fp8: bool = False) -> str:
    """PTX that expands one token's values, kept two of every four consecutive channels (``nm_group=4`` stores at
    s 0.5), into its dense row of the V tile: no zeroing, no per-value stores, no bank conflicts.

    The group's two values are one register of the slot, so its four dense channels are two ``prmt`` of that
    register and the zero register, whose selectors are looked up (``prmt`` of two constant registers) by the
    group's kept bits; the lookup indices of a word's eight groups come from four ``and`` + ``mad`` on the word.
    About six instructions per four channels; the row is written in 16-byte stores. ``fp8``: the slot holds e4m3
    codes, widened to fp16 pairs first (one ``cvt`` per group, exact, unscaled: the caller weighs P by the scales)
    and the tile is fp16.

    Operands: ``$0`` a dummy output; ``$1`` the token's bitmap words and ``$2`` its value slots (byte offsets in
    the kernel's shared allocation; slots swizzled where :func:`swizzled_slots` says); ``$3`` the
    byte offset of its tile row; ``$4`` nonzero when the token is valid (an invalid token's row is written zero).
    The tile is [tokens, D] with 16-byte chunk k of row r at chunk ``k XOR (r mod 8)``
    (:func:`mustafar.kernels.decode_scatter._v_rows_layout`; the lane is the token)."""
    setup, swizzled, regs = _row_setup("expand_asm", head_dim, slot, fp8)
    words = head_dim // 32
    lines = [
        "{",
        ".reg .pred p;",
        f".reg .b32 w<{words}>, v<{regs}>, o<4>, x<4>, s, t, va, base, row, xs, xv, ca, zero, lo0, lo1, hi2, hi3;",
        *([_fp8_regs(regs), ".reg .b16 lo, hi;"] if fp8 else []),
        *setup,
        f"mov.b32 lo0, {_LO0:#x};",
        f"mov.b32 lo1, {_LO1:#x};",
        f"mov.b32 hi2, {_HI2:#x};",
        f"mov.b32 hi3, {_HI3:#x};",
    ]
    for g in range(words):
        # byte k of x0/x1 (x2/x3): i (j) of group 2k / 2k+1 of the word as the lookup's two nibbles (i, i + 4)
        for n, shift in enumerate((0, 4, 2, 6)):
            src = f"w{g}"
            if shift:
                lines.append(f"shr.b32 t, w{g}, {shift};")
                src = "t"
            lines += [f"and.b32 t, {src}, 0x03030303;", f"mad.lo.u32 x{n}, t, 0x11, 0x40404040;"]
        for h in range(2):  # value chunk 2g + h: groups 8g + 4h .. + 3, one register each
            c = 2 * g + h
            lines += _load_chunk(c, regs, True, swizzled) if fp8 else _load_rows_chunk(c, swizzled)
            first = 4 * c if fp8 else 0
            for m in range(2):  # the dense 16-byte chunk 4g + 2h + m: groups 4h + 2m, 4h + 2m + 1 of the word
                for q in range(2):
                    n = 4 * h + 2 * m + q
                    byte = n // 2
                    for half, (x, ta, tb) in enumerate(
                        ((f"x{n % 2}", "lo0", "lo1"), (f"x{2 + n % 2}", "hi2", "hi3"))
                    ):
                        sel = x
                        if byte:
                            lines.append(f"shr.b32 t, {x}, {8 * byte};")
                            sel = "t"
                        lines += [
                            f"prmt.b32 s, {ta}, {tb}, {sel};",
                            f"prmt.b32 o{2 * q + half}, v{first + 2 * m + q}, zero, s;",
                        ]
                lines += _store_row_chunk(4 * g + 2 * h + m)
    lines += ["mov.u32 $0, 0;", "}"]
    return "\n".join(lines)


def _group8_selectors(g: int, k: int) -> list[str]:
    """PTX computing, for byte ``k`` of word ``g`` (one 4:8 group's kept bits b0..b7), the ``prmt`` selectors
    ``s0..s3`` and zero masks ``z0..z3`` of its four output registers (dense positions 2m, 2m + 1).

    Position p holds the value of rank R_p = popc(bits below p), whose bytes are 2R_p, 2R_p + 1 of the group's two
    value registers, so with the ranks one per byte (the bits spread to bytes by a multiply, then summed by
    another) the selectors of two pairs are one ``mad``: ``R·0x22 + 0x10`` per byte. Absent positions (whatever
    their selector picks) are cleared by the masks: bytes 0xFF per kept position spread to its 16-bit half."""
    lines = [f"shr.b32 t, w{g}, {8 * k};" if k else f"mov.b32 t, w{g};"]
    lines += ["and.b32 lo, t, 15;", "shr.b32 hi, t, 4;", *([] if k == 3 else ["and.b32 hi, hi, 15;"])]
    for nib in ("lo", "hi"):  # byte p of b<nib> = b_p of that half
        lines += [f"mul.lo.u32 b{nib}, {nib}, 0x00204081;", f"and.b32 b{nib}, b{nib}, 0x01010101;"]
    lines += [
        "mul.lo.u32 t, blo, 0x01010100;",  # exclusive ranks of positions 0..3
        "mad.lo.u32 s0, t, 0x22, 0x10101010;",
        "shr.b32 s1, s0, 16;",
        "popc.b32 t, lo;",
        "mul.lo.u32 t, t, 0x01010101;",
        "mad.lo.u32 t, bhi, 0x01010100, t;",  # positions 4..7: the low half's count plus their own prefix
        "mad.lo.u32 s2, t, 0x22, 0x10101010;",
        "shr.b32 s3, s2, 16;",
    ]
    for half, nib in enumerate(("lo", "hi")):
        lines += [
            f"mul.lo.u32 b{nib}, b{nib}, 0xFF;",
            f"prmt.b32 z{2 * half}, b{nib}, zero, 0x1100;",
            f"prmt.b32 z{2 * half + 1}, b{nib}, zero, 0x3322;",
        ]
    return lines


FRAG_PACK = 16  # the elements of one :func:`expand8_frag_asm` call: a token's 16 channels of one K half
SELECTOR_TABLE_BYTES = 1024  # fp8 keys' selector table: one 32-bit entry per 4:8 group's kept bits


# The fragment expansions' common start: a valid token's bitmap word (``$8``) shifted to its 16 channels (``$40``),
# zero for an invalid one (``$56``), and ``ta`` at its values (``$24``).
_FRAG_PROLOGUE = (
    "setp.ne.u32 p, $56, 0;",
    "mov.b32 w0, 0;",
    "mov.u32 ta, global_smem;",
    "add.u32 ta, ta, $8;",
    "@p ld.shared.b32 w0, [ta];",
    "shr.b32 w0, w0, $40;",
    "mov.u32 ta, global_smem;",
    "add.u32 ta, ta, $24;",
)


@functools.cache
def expand8_frag_asm(fp8: bool = False, transposed: bool = False) -> str:
    """PTX that expands 16 channels of one token's keys, kept four of every eight (two groups), straight into a
    lane's registers of the scores' MMA operand: the eight registers hold the dense channel pairs 0-1 .. 14-15 in
    order (the caller maps them onto the MMA's K positions and gives q the same order). No tile, so none of a row
    tile's shared-memory stores and ldmatrix reads (results/kernels/NOTES.md, round 20).

    fp16/bf16: a group's four values are two registers of the slot; each pair of dense positions is one ``prmt``
    of the two (selector from the ranks, :func:`_group8_selectors`) and an ``and`` with its zero mask, about 33
    instructions per eight channels. fp8: a group's four codes are one register, so its eight positions are two
    ``prmt`` of that register and the zero register, each followed by two widening ``cvt`` (exact, unscaled: the
    caller scales the scores); the selectors are one shared-memory load from a 256-entry table indexed by the
    group's kept bits (built once per program, :func:`mustafar.kernels.decode_scatter._fill_selector_table`: for
    position p, the ``prmt`` nibble of its rank's code, or 7, a byte of the zero register, where p is not kept, at bit 4p: one
    half-word per ``prmt``), about 13 instructions per eight channels where computing them took 30 and the kernel
    was bound by its ALU pipe (NOTES, round 21).

    Operands (``FRAG_PACK`` copies of each input, the first read): ``$0..$7`` the pairs; ``$8`` the byte offset of
    the bitmap word holding the 16 channels, ``$24`` of their first kept value (both from ``global_smem``, the
    values 16 bytes, fp8 8, inside one staged chunk), ``$40`` the channels' bit offset in the word (0 or 16),
    ``$56`` nonzero when the token is valid (an invalid token's pairs come out zero), ``$72`` the selector table's
    byte offset (fp8).

    A 2:4 pattern is a 4:8 one (four kept in every eight, values in rank order), so the same expansion reads values
    kept two of every four; ``transposed`` hands them to the P·V MMA's A operand as
    :func:`expand16_frag_asm` (``transposed``) does."""
    out = [f"r{j}" if transposed else f"${j}" for j in range(8)]
    lines = [
        "{",
        ".reg .pred p;",
        ".reg .b32 w0, v<4>, s<4>, z<4>, lo, hi, blo, bhi, t, ta, zero;",
        *([".reg .b32 r<8>;"] if transposed else []),
        *([".reg .b32 e<2>;", ".reg .b16 clo, chi;"] if fp8 else []),
        *_FRAG_PROLOGUE,
        "mov.u32 zero, 0;",
    ]
    if fp8:
        lines += ["ld.shared.v2.b32 {e0, e1}, [ta];", "mov.u32 ta, global_smem;", "add.u32 ta, ta, $72;"]
        for q in range(2):  # the group's kept bits times 4: the entry's byte offset
            lines += [
                "shl.b32 t, w0, 2;" if q == 0 else "shr.b32 t, w0, 6;",
                "and.b32 t, t, 0x3FC;",
                "add.u32 t, ta, t;",
                "ld.shared.b32 s0, [t];",
                "shr.b32 s1, s0, 16;",
            ]
            for half in range(2):  # positions 4·half .. + 3: codes of ranks 0-3, or the zero register's bytes
                k = 4 * q + 2 * half
                lines += [
                    f"prmt.b32 t, e{q}, zero, s{half};",
                    "mov.b32 {clo, chi}, t;",
                    f"cvt.rn.f16x2.e4m3x2 {out[k]}, clo;",
                    f"cvt.rn.f16x2.e4m3x2 {out[k + 1]}, chi;",
                ]
    else:
        lines.append("ld.shared.v4.b32 {v0, v1, v2, v3}, [ta];")
        for q in range(2):
            lines += _group8_selectors(0, q)
            for m in range(4):
                lines += [f"prmt.b32 t, v{2 * q}, v{2 * q + 1}, s{m};", f"and.b32 {out[4 * q + m]}, t, z{m};"]
    if transposed:
        lines += [f"movmatrix.sync.aligned.m8n8.trans.b16 ${j}, r{j};" for j in range(8)]
    lines.append("}")
    return "\n".join(lines)


def nm16_code_word(group: int) -> tuple[int, int]:
    """(byte offset of the 32-bit slot word holding the first code of 5:16 group ``group``, bit shift of that
    code inside it): the group's five codes are slot bytes 5·g .. 5·g + 4 in ascending order, the store's own
    layout, so they lie in that word and the next one."""
    first = NM16_CODES * group
    return 4 * (first // 4), 8 * (first % 4)


def _nm16_group(out: list[str], kept: str, x0: str, x1: str, shift: str, table: str) -> list[str]:
    """PTX expanding one 5:16 group of fp8 codes into the eight fp16-pair registers ``out`` (dense channel pairs
    0-1 .. 14-15, unscaled). ``kept``: a register whose low 16 bits are the group's kept bits (clobbered);
    ``x0``, ``x1``: the slot words holding its codes from bit ``shift`` of ``x0`` on (a register or an immediate);
    ``table``: a register holding the selector table's shared address.

    The codes are funnel-shifted into ``a`` (codes 0-3) and ``b`` (the fifth, bytes 1-3 zero). Positions 0-7: one
    ``prmt`` of (a, b) per four positions with selectors from the 256-entry table indexed by the low 8 kept bits
    (position p's nibble: its rank, or 7 where it is not kept, a zero byte of b). Positions 8-15: the same table on
    the high 8 bits, the codes shifted right by the low half's count (``shf.r.clamp``), so the ranks start at 0
    again and the vacated bytes are zero. Scratch: a, b, lo, hi, s0, s1, t, n, clo, chi."""
    lines = (
        [f"shf.r.clamp.b32 a, {x0}, {x1}, {shift};", f"bfe.u32 b, {x1}, {shift}, 8;"]
        if shift != "0"
        else [f"mov.b32 a, {x0};", f"and.b32 b, {x1}, 0xFF;"]
    )
    lines += [
        f"shl.b32 t, {kept}, 2;",  # the low 8 kept bits times 4: the table entry's byte offset
        "and.b32 t, t, 0x3FC;",
        f"add.u32 t, {table}, t;",
        "ld.shared.b32 s0, [t];",
        f"shr.b32 t, {kept}, 6;",  # the high 8
        "and.b32 t, t, 0x3FC;",
        f"add.u32 t, {table}, t;",
        "ld.shared.b32 s1, [t];",
        f"and.b32 n, {kept}, 0xFF;",
        "popc.b32 n, n;",
        "shl.b32 n, n, 3;",
        "shf.r.clamp.b32 lo, a, b, n;",  # (b:a) >> 8·count: the high half's first code at byte 0
        "shr.b32 hi, b, n;",
    ]
    for quarter, (src_lo, src_hi, sel) in enumerate((("a", "b", "s0"), ("a", "b", "s0"), ("lo", "hi", "s1"),
                                                     ("lo", "hi", "s1"))):  # fmt: skip
        if quarter % 2:
            lines.append(f"shr.b32 {sel}, {sel}, 16;")
        lines += [
            f"prmt.b32 t, {src_lo}, {src_hi}, {sel};",
            "mov.b32 {clo, chi}, t;",
            f"cvt.rn.f16x2.e4m3x2 {out[2 * quarter]}, clo;",
            f"cvt.rn.f16x2.e4m3x2 {out[2 * quarter + 1]}, chi;",
        ]
    return lines


_NM16_REGS = ".reg .b32 a, b, lo, hi, s0, s1, t, n;"


@functools.cache
def expand16_frag_asm(transposed: bool = False) -> str:
    """PTX that expands one token's 16 key channels kept five of every sixteen (one 5:16 group, fp8 codes) into a
    lane's eight registers of the scores' MMA operand, as :func:`expand8_frag_asm` does for two 4:8 groups: the
    registers hold the dense channel pairs 0-1 .. 14-15 as fp16 (unscaled codes; :func:`_nm16_group`). About 31
    instructions per 16 channels (4:8: 26) for 5/16 of the bytes instead of 8/16.

    Operands (``FRAG_PACK`` copies of each input, the first read): ``$0..$7`` the pairs; ``$8`` the byte offset of
    the bitmap word holding the 16 channels, ``$24`` of the slot word holding the group's first code
    (:func:`nm16_code_word`; the next word is read too), ``$40`` the channels' bit offset in the bitmap word (0 or
    16), ``$56`` nonzero when the token is valid (an invalid token's pairs come out zero), ``$72`` the selector
    table's byte offset, ``$88`` the first code's bit shift in its word.

    ``transposed`` (values into the P·V MMA's A operand, Vᵀ): the eight pairs r_0 .. r_7 of the lanes (token
    L div 4 + 8j, pair m of group i = L mod 4) are, over the warp, eight 8 × 8 matrices [token, channel pair], and
    ``movmatrix.trans`` turns register r_m into lane L's fragment of the transpose: channel row c = L div 4 (the
    half's channel 16·(c div 2) + 2m + c mod 2), tokens 8j + 2(L mod 4), + 1. No row tile, stores or ldmatrix
    (results/kernels/NOTES.md, round 23's design); warp-collective, so every lane runs it."""
    out = [f"r{j}" if transposed else f"${j}" for j in range(8)]
    lines = [
        "{",
        *([".reg .b32 r<8>;"] if transposed else []),
        ".reg .pred p;",
        ".reg .b32 w0, x0, x1, ta;",
        _NM16_REGS,
        ".reg .b16 clo, chi;",
        *_FRAG_PROLOGUE,
        "ld.shared.b32 x0, [ta];",
        "ld.shared.b32 x1, [ta+4];",
        "mov.u32 ta, global_smem;",
        "add.u32 ta, ta, $72;",
        *_nm16_group(out, "w0", "x0", "x1", "$88", "ta"),
    ]
    if transposed:
        lines += [f"movmatrix.sync.aligned.m8n8.trans.b16 ${j}, r{j};" for j in range(8)]
    return "\n".join([*lines, "}"])


def _code_load(c: int, swizzled: bool = False) -> list[str]:
    """The 8-byte load of e4m3 codes ``8c .. 8c + 7`` into ``e2c``, ``e2c+1`` (scattered as stored)."""
    return _slot_load(f"{{e{2 * c}, e{2 * c + 1}}}", 8 * c, swizzled)


SCORE_HEADS = 8  # score outputs of :func:`score_asm` (a GQA group of at most 8 query heads; the rest are 0)
# fp8 keys are scored in fp16 (below): the queries come scaled by a power of two to magnitudes below this bound, so
# a word's partial sum stays finite: at most 32 kept codes of at most 448 (e4m3's largest) times 4 is 57,344,
# under fp16's 65,504
HALF_SCORE_Q_BOUND = 4  # a power of two


@functools.cache
def score_asm(head_dim: int, keep: int, slot: int, n_rep: int, bf16: bool, fp8: bool = False) -> str:
    """PTX that scores one token's kept keys against the group's queries without a dense tile.

    Lane ``j`` holds ``q[32g + j]`` of every word ``g`` for all query heads (packed in pairs); walking its token's
    kept bits like :func:`scatter_asm`, the lane fetches ``q`` at each kept channel from the lane that holds it
    (``shfl.sync.idx``: conflict-free, where the scatter's 2-byte shared stores collide on banks) and accumulates
    ``k·q`` in fp32. Every lane runs every step (the shuffles need the whole warp); invalid lanes walk zero words
    and their scores are discarded by the caller.

    Operands: ``$0 .. $7`` the scores of heads 0..7 (heads at or past ``n_rep``: 0); ``$8`` the token's bitmap
    words and ``$9`` its value slots (byte offsets in the kernel's shared allocation); ``$10`` nonzero when the
    token is valid; then ``q`` pairs, word-major: ``$11 + 4g + k`` holds heads ``2k, 2k+1`` at channel
    ``32g + lane``.

    ``fp8``: the slot holds e4m3 codes (``slot`` bytes) and the scores come out unscaled (the caller multiplies
    each token's by its scale and divides q's scale out). The q pairs are then fp16 whatever the model's dtype,
    scaled below :data:`HALF_SCORE_Q_BOUND`, and each pair of heads accumulates a word's products with one packed
    fp16 ``fma`` per kept code, converted to fp32 once per word: half the instructions of widening every q to
    fp32 (results/kernels/NOTES.md, round 35). Its rounding (2^-11 per step, at most ``q_g`` steps) is far below
    the codes' own (e4m3 keeps 3 mantissa bits; on real caches about 1/40 of fp8 keys' error)."""
    if not 1 <= n_rep <= SCORE_HEADS:
        raise ValueError(f"score_asm serves GQA groups of 1 to {SCORE_HEADS} query heads, got {n_rep}")
    quotas = word_quotas(head_dim, keep)
    words = head_dim // 32
    regs = _value_regs(keep, slot, fp8)
    pairs = (n_rep + 1) // 2
    cvt = "cvt.f32.bf16" if bf16 and not fp8 else "cvt.f32.f16"  # the q halves' widening (fp32 walk)
    lines = [
        "{",
        ".reg .pred p;",
        f".reg .b32 w<{words}>, v<{regs}>, x<{pairs}>, i, m, t, va, base, xv, ca;",
        *([_fp8_regs(regs), f".reg .b32 a<{pairs}>, kk;"] if fp8 else []),
        f".reg .f32 s<{n_rep}>, f, kf;",
        ".reg .b16 lo, hi;",
        "setp.ne.u32 p, $10, 0;",
        "mov.u32 base, global_smem;",
    ]
    lines += [f"mov.b32 w{g}, 0;" for g in range(words)] + [
        f"mov.f32 s{h}, 0f00000000;" for h in range(n_rep)
    ]
    lines += _load_words(words, "$8", "$9")
    swizzle, swizzled = _staged_slot(slot, fp8)
    lines += swizzle
    loads = _chunks_before_word(quotas, functools.partial(_load_chunk, regs=regs, fp8=fp8, swizzled=swizzled))
    first = 0
    for g, q in enumerate(quotas):
        lines += loads[g]
        if fp8:
            lines += [f"mov.b32 a{k}, 0;" for k in range(pairs)]
        for step in range(q):
            j = first + q - 1 - step
            half = "hi" if j % 2 else "lo"
            lines += [
                f"bfind.u32 i, w{g};",
                "shl.b32 m, 1, i;",
                f"xor.b32 w{g}, w{g}, m;",
                f"mov.b32 {{lo, hi}}, v{j // 2};",
                f"mov.b32 kk, {{{half}, {half}}};" if fp8 else f"{cvt} kf, {half};",
            ]
            for k in range(pairs):
                lines.append(f"shfl.sync.idx.b32 x{k}, ${11 + 4 * g + k}, i, 31, -1;")
                if fp8:
                    lines.append(f"fma.rn.f16x2 a{k}, kk, x{k}, a{k};")
                    continue
                lines.append(f"mov.b32 {{lo, hi}}, x{k};")
                for half_k, h in (("lo", 2 * k), ("hi", 2 * k + 1)):
                    if h < n_rep:
                        lines += [f"{cvt} f, {half_k};", f"fma.rn.f32 s{h}, kf, f, s{h};"]
        if fp8:
            for k in range(pairs):
                lines.append(f"mov.b32 {{lo, hi}}, a{k};")
                for half_k, h in (("lo", 2 * k), ("hi", 2 * k + 1)):
                    if h < n_rep:
                        lines += [f"cvt.f32.f16 f, {half_k};", f"add.f32 s{h}, s{h}, f;"]
        first += q
    lines += [f"mov.f32 ${h}, s{h};" for h in range(n_rep)]
    lines += [f"mov.f32 ${h}, 0f00000000;" for h in range(n_rep, SCORE_HEADS)]
    lines.append("}")
    return "\n".join(lines)
