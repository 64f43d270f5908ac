"""The scatter decoder's PTX, executed on the CPU by a small interpreter of the instructions it uses, against the
dense tile written from the plain-PyTorch decode; and the dispatcher's choice of decoder.

The GPU tests (tests/kernels/test_gpu_scatter.py) check the compiled kernel end to end; this one pins the walk,
the slot order and the address arithmetic without a GPU.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from mustafar.formats import CompressedStore
from mustafar.formats.bitmap import pack_bitmap, padded_keep
from mustafar.formats.fp8 import quantize
from mustafar.kernels import dispatch, support
from mustafar.kernels.scatter_ptx import (
    FRAG_PACK,
    HALF_SCORE_Q_BOUND,
    SCORE_HEADS,
    expand8_frag_asm,
    expand16_frag_asm,
    expand_asm,
    nm16_code_word,
    row_xor,
    scatter_asm,
    score_asm,
    store_quotas,
)
from mustafar.pruning.keep import nm_topk_mask, word_quotas, word_topk_mask

SMEM_BASE = 0x400  # where the interpreter puts global_smem: a nonzero base catches a missing add


def _parse(asm: str) -> list[tuple[str | None, str, list[str]]]:
    """(guard predicate, opcode, operands) per instruction; register lists and addresses kept as written."""
    out = []
    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if line in ("{", "}") or line.startswith(".reg"):
            continue
        guard = None
        if line.startswith("@"):
            guard, line = line.split(None, 1)
            guard = guard[1:]
        op, args = line.split(None, 1)
        if args.startswith("{"):  # a register list first: ld.shared.v* or mov.b32 {lo, hi}
            names, rest = args[1:].split("}", 1)
            ops = [[n.strip() for n in names.split(",")], rest.lstrip(", ").strip()]
        elif "{" in args:  # an address, then a register list: st.shared.v*
            at, names = args.split(",", 1)
            ops = [at.strip(), [n.strip() for n in names.strip().strip("{}").split(",")]]
        else:
            ops = [a.strip() for a in args.split(",")]
        out.append((guard, op, ops))
    return out


def run_ptx(asm: str, operands: list[int], smem: np.ndarray, lane: int = 0) -> dict[str, int]:
    """Execute ``asm`` for one lane (``%laneid`` = ``lane``): ``$1..`` from ``operands``, shared memory ``smem``
    (bytes, at SMEM_BASE); returns the registers, outputs written by ``and`` under their ``$`` names."""
    regs: dict[str, int] = {"global_smem": SMEM_BASE, "%laneid": lane}
    preds: dict[str, bool] = {}

    def val(x: str) -> int:
        if x[0] == "$":
            return operands[int(x[1:]) - 1]
        if x[0].isdigit():
            return int(x, 0)
        return regs.get(x, 0)  # an unwritten register (an invalid lane skipped its loads)

    def addr(x: str) -> int:
        base, _, off = x.strip("[]").partition("+")
        return val(base) + int(off or 0) - SMEM_BASE

    for guard, op, a in _parse_cached(asm):
        if guard and not preds[guard]:
            continue
        if op.startswith("ld.shared"):
            names, at = (a[0], a[1]) if isinstance(a[0], list) else ([a[0]], a[1])
            words = smem[addr(at) : addr(at) + 4 * len(names)].view(np.uint32)
            regs.update({n: int(w) for n, w in zip(names, words)})
        elif op.startswith("st.shared.v"):
            at = addr(a[0])
            smem[at : at + 4 * len(a[1])].view(np.uint32)[:] = [regs[n] for n in a[1]]
        elif op == "prmt.b32":
            regs[a[0]] = _prmt(val(a[1]), val(a[2]), val(a[3]))
        elif op == "st.shared.b16":
            smem[addr(a[0]) : addr(a[0]) + 2].view(np.uint16)[0] = regs[a[1]]
        elif op == "st.shared.b8":  # a wider register's low byte
            smem[addr(a[0])] = regs[a[1]] & 0xFF
        elif op == "shr.b32":
            regs[a[0]] = val(a[1]) >> val(a[2])
        elif (
            op == "movmatrix.sync.aligned.m8n8.trans.b16"
        ):  # warp-collective: the caller transposes across lanes
            regs[a[0]] = val(a[1])
        elif op == "bfe.u32":  # bits [b, b + c) of a, zero-extended
            regs[a[0]] = val(a[1]) >> val(a[2]) & (1 << val(a[3])) - 1
        elif op == "shf.r.clamp.b32":  # (b:a) >> min(c, 32), the low word
            regs[a[0]] = (val(a[1]) | val(a[2]) << 32) >> min(val(a[3]), 32) & 0xFFFFFFFF
        elif op == "mov.b32" and isinstance(a[0], list):
            regs[a[0][0]], regs[a[0][1]] = val(a[1]) & 0xFFFF, val(a[1]) >> 16
        elif op == "setp.ne.u32":
            preds[a[0]] = val(a[1]) != val(a[2])
        elif op in ("mov.u32", "mov.b32"):
            if a[0][0] != "$":
                regs[a[0]] = val(a[1])
        elif op == "add.u32":
            regs[a[0]] = (val(a[1]) + val(a[2])) & 0xFFFFFFFF
        elif op == "sub.u32":
            regs[a[0]] = (val(a[1]) - val(a[2])) & 0xFFFFFFFF
        elif op == "xor.b32":
            regs[a[0]] = val(a[1]) ^ val(a[2])
        elif op == "and.b32":
            regs[a[0]] = val(a[1]) & val(a[2])
        elif op == "shl.b32":  # PTX: shifts of 32 or more give 0
            n = val(a[2])
            regs[a[0]] = (val(a[1]) << n) & 0xFFFFFFFF if n < 32 else 0
        elif op == "mul.lo.u32":
            regs[a[0]] = (val(a[1]) * val(a[2])) & 0xFFFFFFFF
        elif op == "popc.b32":
            regs[a[0]] = bin(val(a[1])).count("1")
        elif op == "mad.lo.u32":
            regs[a[0]] = (val(a[1]) * val(a[2]) + val(a[3])) & 0xFFFFFFFF
        elif op == "bfind.u32":
            v = val(a[1])
            regs[a[0]] = v.bit_length() - 1 if v else 0xFFFFFFFF
        elif op == "cvt.rn.f16x2.e4m3x2":
            regs[a[0]] = _e4m3x2_to_f16x2(val(a[1]))
        else:
            raise NotImplementedError(f"PTX op {op} {a}")
    return regs


_parse_cached = functools.cache(_parse)


def _prmt(a: int, b: int, c: int) -> int:
    """``prmt.b32`` (default mode): result byte i is byte ``c[4i+2:4i]`` of the eight bytes {b, a} (a the low
    four), or that byte's sign replicated when ``c[4i+3]`` is set."""
    src = a | b << 32
    out = 0
    for i in range(4):
        sel = c >> 4 * i & 0xF
        byte = src >> 8 * (sel & 7) & 0xFF
        if sel & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << 8 * i
    return out


def _e4m3x2_to_f16x2(b16: int) -> int:
    """``cvt.rn.f16x2.e4m3x2``: the low byte to the low fp16 half, the high byte to the high half (exact)."""
    pair = np.array([b16 & 0xFF, b16 >> 8], dtype=np.uint8)
    halves = torch.from_numpy(pair).view(torch.float8_e4m3fn).to(torch.float16).view(torch.int16).numpy()
    lo, hi = (int(h) & 0xFFFF for h in halves)
    return lo | hi << 16


def _f32(x: float) -> float:
    return float(np.float32(x))


def _fma_f16x2(a: int, b: int, c: int) -> int:
    """``fma.rn.f16x2`` per 16-bit half: the exact a·b + c (fp16 products and sums are exact in fp64) rounded
    once to fp16."""
    halves = [
        np.array([x & 0xFFFF, x >> 16], dtype=np.uint16).view(np.float16).astype(np.float64)
        for x in (a, b, c)
    ]
    out = (halves[0] * halves[1] + halves[2]).astype(np.float16).view(np.uint16)
    return int(out[0]) | int(out[1]) << 16


def _half_to_f32(bits: int, bf16: bool) -> float:
    if bf16:
        return float(np.array([bits << 16], dtype=np.uint32).view(np.float32)[0])
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def run_warp(asm: str, operands: list[list[int]], smem: np.ndarray) -> list[list[float]]:
    """Execute ``asm`` for 32 lanes in lockstep (it has no branches; ``shfl.sync`` reads the other lanes'
    registers); ``operands[lane]`` are that lane's inputs. Returns each lane's float outputs ``$0 ..``."""
    n_out = 1 + max(int(x) for x in __import__("re").findall(r"mov\.f32 \$(\d+)", asm))
    regs = [{"global_smem": SMEM_BASE, "%laneid": lane} for lane in range(32)]
    preds = [{} for _ in range(32)]
    outs = [[0.0] * n_out for _ in range(32)]

    def val(lane: int, x: str):
        if x[0] == "$":
            return operands[lane][int(x[1:]) - n_out]
        if x.startswith("0f"):
            return float(np.array([int(x[2:], 16)], dtype=np.uint32).view(np.float32)[0])
        if x.lstrip("-")[0].isdigit():
            return int(x)
        return regs[lane].get(x, 0)

    def addr(lane: int, x: str) -> int:
        base, _, off = x.strip("[]").partition("+")
        return val(lane, base) + int(off or 0) - SMEM_BASE

    for guard, op, a in _parse_cached(asm):
        if op.startswith("shfl.sync.idx"):
            src = [val(lane, a[1]) for lane in range(32)]
            for lane in range(32):
                regs[lane][a[0]] = src[val(lane, a[2]) & 31]
            continue
        for lane in range(32):
            r = regs[lane]
            if guard and not preds[lane][guard]:
                continue
            if op.startswith("ld.shared"):
                names, at = (a[0], a[1]) if isinstance(a[0], list) else ([a[0]], a[1])
                words = smem[addr(lane, at) : addr(lane, at) + 4 * len(names)].view(np.uint32)
                r.update({n: int(w) for n, w in zip(names, words)})
            elif op == "mov.b32" and isinstance(a[0], list):
                r[a[0][0]], r[a[0][1]] = val(lane, a[1]) & 0xFFFF, val(lane, a[1]) >> 16
            elif op == "mov.b32" and isinstance(a[1], list):  # two 16-bit halves into one register
                r[a[0]] = val(lane, a[1][0]) | val(lane, a[1][1]) << 16
            elif op == "setp.ne.u32":
                preds[lane][a[0]] = val(lane, a[1]) != val(lane, a[2])
            elif op in ("mov.u32", "mov.b32", "mov.f32"):
                if a[0][0] == "$":
                    outs[lane][int(a[0][1:])] = val(lane, a[1])
                else:
                    r[a[0]] = val(lane, a[1])
            elif op == "add.u32":
                r[a[0]] = (val(lane, a[1]) + val(lane, a[2])) & 0xFFFFFFFF
            elif op == "sub.u32":
                r[a[0]] = (val(lane, a[1]) - val(lane, a[2])) & 0xFFFFFFFF
            elif op == "xor.b32":
                r[a[0]] = val(lane, a[1]) ^ val(lane, a[2])
            elif op == "and.b32":
                r[a[0]] = val(lane, a[1]) & val(lane, a[2])
            elif op == "shl.b32":
                n = val(lane, a[2])
                r[a[0]] = (val(lane, a[1]) << n) & 0xFFFFFFFF if n < 32 else 0
            elif op == "shr.b32":
                r[a[0]] = val(lane, a[1]) >> val(lane, a[2])
            elif op == "bfind.u32":
                v = val(lane, a[1])
                r[a[0]] = v.bit_length() - 1 if v else 0xFFFFFFFF
            elif op == "cvt.rn.f16x2.e4m3x2":
                r[a[0]] = _e4m3x2_to_f16x2(val(lane, a[1]))
            elif op in ("cvt.f32.f16", "cvt.f32.bf16"):
                r[a[0]] = _half_to_f32(val(lane, a[1]), op.endswith("bf16"))
            elif op == "fma.rn.f32":
                r[a[0]] = _f32(val(lane, a[1]) * val(lane, a[2]) + val(lane, a[3]))
            elif op == "add.f32":
                r[a[0]] = _f32(val(lane, a[1]) + val(lane, a[2]))
            elif op == "fma.rn.f16x2":
                r[a[0]] = _fma_f16x2(val(lane, a[1]), val(lane, a[2]), val(lane, a[3]))
            else:
                raise NotImplementedError(f"PTX op {op} {a}")
    return outs


def staged_slots(slots: np.ndarray, fragments: bool = False) -> np.ndarray:
    """The staged value slots [tokens, bytes] as the ring holds them (scatter_ptx.swizzled_slots): whole 128-byte
    slots swizzled, token t's 16-byte chunk k at chunk k XOR (t mod 8) of its row of 8 chunks; 32- and 64-byte slots
    packed four or two to a 128-byte row, row r's chunk j at chunk j XOR (r mod 8) (chunks move between the row's
    tokens, so read the result as one flat region at the slot's stride); ``fragments``: the rows' XOR of sides
    read as MMA fragments (scatter_ptx.row_xor); other slots as they are (the tests place them at their own
    stride)."""
    tokens, nbytes = slots.shape
    if nbytes % 128 and nbytes not in (32, 64):
        return slots
    step = max(nbytes, 128)  # bytes one XOR pattern spans: a slot, or a row of slots
    flat = slots.reshape(-1, step)
    out = np.empty_like(flat)
    for r in range(flat.shape[0]):
        for k in range(step // 16):
            j = (k & ~7) | ((k & 7) ^ row_xor(r, nbytes, fragments))
            out[r, 16 * j : 16 * j + 16] = flat[r, 16 * k : 16 * k + 16]
    return out.reshape(tokens, nbytes)


def query_pairs(q: torch.Tensor, d: int) -> list[list[int]]:
    """Each lane's 16 packed query-pair registers for score_asm: word-major, heads 2k, 2k+1 at channel
    32g + lane (zero past the group and past d)."""
    q16 = np.zeros((SCORE_HEADS, 128), dtype=np.uint16)
    q16[: q.shape[0], :d] = q.view(torch.int16).numpy().view(np.uint16)
    return [
        [
            int(q16[2 * k, 32 * g + lane]) | int(q16[2 * k + 1, 32 * g + lane]) << 16
            for g in range(4)
            for k in range(4)
        ]
        for lane in range(32)
    ]


def tile_offset(r: int, c: int, d: int) -> int:
    """Byte offset of token r's channel c in the dense Vᵀ tile: four [d, 8] blocks of 8 tokens with 16-byte rows,
    block k = r div 8 holding channel c at row c XOR 4·(k mod 2)."""
    k = r // 8
    return 2 * (k * 8 * d + 8 * (c ^ (4 * (k % 2))) + r % 8)


def tile8_offset(r: int, c: int, d: int) -> int:
    """Byte offset of token r's channel c in the e4m3 tile of fp8 stores: two [d, 16] blocks of 16 tokens with
    16-byte rows, block k = r div 16 holding channel c at row c XOR 4·k."""
    k = r // 16
    return k * 16 * d + 16 * (c ^ (4 * k)) + r % 16


def column8_operands(r: int, tile: int, d: int) -> list[int]:
    """scatter_asm(fp8=True)'s $3, $4 for token r (as the kernel computes them)."""
    return [tile + (r // 16) * 16 * d + r % 16, (r // 16) * 4]


def column_operands(r: int, tile: int, d: int) -> list[int]:
    """scatter_asm's $3, $4 for token r: its column's byte offset and channel XOR (as the kernel computes them)."""
    return [tile + (r // 8) * 16 * d + (r % 8) * 2, ((r // 8) % 2) * 4]


def _layout_coordinates(bases: list[list[int]], offset: int) -> tuple[int, int]:
    """The [row, column] a linear shared layout places at element ``offset``: its offset bits' bases XORed."""
    row = col = 0
    for bit, (dr, dc) in enumerate(bases):
        if offset >> bit & 1:
            row, col = row ^ dr, col ^ dc
    return row, col


@pytest.mark.parametrize("d", [64, 128])
def test_tile_offsets_are_the_layouts_the_kernel_gives_gluon(d):
    """The kernel's shared layouts map each offset bit to a [row, column] (fp16: the [2d, 16] view, row = the
    16-token half·d + channel, column = token mod 16; e4m3: [d, 32], channel × token), combined by XOR; every
    element they place must sit where the PTX (tile_offset, tile8_offset) stores it.
    tests/kernels/test_gpu_scatter.py checks the convention on a GPU."""
    from mustafar.kernels.decode_scatter import _vt8_tile_layout, _vt_tile_layout

    seen, seen8 = set(), set()
    for offset in range(32 * d):
        row, col = _layout_coordinates(_vt_tile_layout(d).offset_bases, offset)
        r, c = (row // d) * 16 + col, row % d
        assert tile_offset(r, c, d) == 2 * offset, (offset, r, c)
        seen.add((r, c))
        c8, r8 = _layout_coordinates(_vt8_tile_layout(d).offset_bases, offset)
        assert tile8_offset(r8, c8, d) == offset, (offset, r8, c8)
        seen8.add((r8, c8))
    assert len(seen) == len(seen8) == 32 * d


def test_k_fragments_are_the_mma_operand_with_one_token_per_ptx_call():
    """The register layout the K expansion produces (decode_scatter._k_frag_layout) is the scores' MMA A operand
    as Triton lays it out, registers reordered only (the conversion moves no data); each lane's FRAG_PACK
    consecutive registers are one token (row L div 4 + 8j) and, in order, the 16 channels its PTX call expands,
    16·(L mod 4) + e, under the K-position-to-channel map q's tile uses (decode_scatter._q_frag)."""
    import triton.experimental.gluon.language as gl
    from triton._C.libtriton import gluon_ir, ir

    from mustafar.kernels.decode_scatter import _k_frag_layout

    ctx = ir.context()
    ir.load_dialects(ctx)
    builder = gluon_ir.GluonOpBuilder(ctx)
    mma = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    op_a = builder.to_linear_layout(gl.DotOperandLayout(0, mma, k_width=2)._to_ir(builder), [32, 64])
    frag = _k_frag_layout()
    assert sorted(map(tuple, frag.reg_bases)) == sorted(map(tuple, op_a.reg_bases))
    assert frag.lane_bases == op_a.lane_bases and frag.shape == [32, 64]

    def q_channel(k: int) -> int:  # _q_frag's K position -> channel, half 0
        return 16 * ((k // 2) % 4) + 2 * (k // 8) + k % 2

    seen = set()
    for lane in range(32):
        for reg in range(64):
            row, col = _layout_coordinates(frag.reg_bases, reg)
            lr, lc = _layout_coordinates(frag.lane_bases, lane)
            row, col = row ^ lr, col ^ lc
            call, e = divmod(reg, FRAG_PACK)
            assert row == lane // 4 + 8 * (call % 2) + 16 * (call // 2), (lane, reg)
            assert q_channel(col) == 16 * (lane % 4) + e, (lane, reg)
            seen.add((row, col))
    assert len(seen) == 32 * 64


@pytest.mark.parametrize("d,keep", [(128, 38), (128, 64), (128, 37), (128, 3), (64, 19), (64, 32), (64, 64)])
def test_scatter_ptx_writes_the_decoded_token_at_its_tile_addresses(d, keep):
    torch.manual_seed(keep)
    tokens = 32
    rows = torch.randn(tokens, d, dtype=torch.float16)
    rows[3] = 0.0  # an all-zero token still keeps `keep` entries (ties to the lower channel)
    mask = word_topk_mask(rows.abs(), keep)
    slot = padded_keep(keep, 2)
    words = pack_bitmap(mask).numpy().view(np.uint32)
    vals = np.zeros((tokens, slot), dtype=np.float16)
    for t in range(tokens):
        vals[t, :keep] = rows[t][mask[t]].numpy()
    # shared memory: words at 0, values after them, the tile at TILE; tile rows invalid past `valid`
    tile, valid = 8192, tokens - 1
    smem = np.zeros(tile + tokens * d * 2, dtype=np.uint8)
    smem[: words.nbytes] = words.reshape(-1).view(np.uint8)
    voff = words.nbytes
    smem[voff : voff + vals.nbytes] = staged_slots(vals.view(np.uint8)).reshape(-1)
    asm = scatter_asm(d, keep, slot)
    for r in range(tokens):
        ops = [r * 4 * (d // 32), voff + r * 2 * slot, *column_operands(r, tile, d), int(r < valid)]
        run_ptx(asm, ops, smem, lane=r)
    dense = torch.where(mask, rows, torch.zeros_like(rows))  # no -0.0 from unkept negatives
    dense[valid:] = 0
    assert np.array_equal(smem[tile:], _tile_image(dense, tile_offset))


def _tile_image(dense: torch.Tensor, offset: Callable[[int, int, int], int]) -> np.ndarray:
    """The bytes of a 16-bit dense tile holding ``dense`` [tokens, d], element (r, c) at byte ``offset(r, c, d)``."""
    tokens, d = dense.shape
    bits = dense.view(torch.int16).numpy().view(np.uint16)
    image = np.zeros(tokens * d * 2, dtype=np.uint8)
    for r in range(tokens):
        for c in range(d):
            o = offset(r, c, d)
            image[o : o + 2] = bits[r, c : c + 1].view(np.uint8)
    return image


def test_prmt_picks_bytes_as_the_ptx_manual_says():
    a, b = 0x33221100, 0x77665544
    assert _prmt(a, b, 0x5410) == 0x55441100  # the low halves of a and b
    assert _prmt(a, b, 0x3276) == 0x33227766
    assert _prmt(0x80, 0, 0x4448) == 0x000000FF  # sign of byte 0 replicated; bytes of a zero b
    assert _prmt(a, 0, 0x4444) == 0


def v_rows_offset(r: int, c: int, d: int) -> int:
    """Byte offset of token r's channel c in the dense V tile of two-of-four stores: [tokens, d] rows with 16-byte
    chunk k of row r at chunk k XOR (r mod 8)."""
    return 2 * d * r + 16 * ((c // 8) ^ (r % 8)) + 2 * (c % 8)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("values", ["fp16", "bf16", "fp8"])
def test_expand_ptx_writes_each_token_as_its_dense_row(d, values):
    """expand_asm (two of every four consecutive channels kept) against the plain-PyTorch dense rows (ties to the lower channel; fp8: the codes' unscaled values in fp16); invalid tokens'
    rows come out zero whatever their stale slots hold."""
    torch.manual_seed(d)
    tokens, keep, fp8 = 32, d // 2, values == "fp8"
    rows = torch.randn(tokens, d).to(torch.bfloat16 if values == "bf16" else torch.float16)
    rows[3] = 0.0  # ties: the lower channels of every group
    ties = [[1.0, -1.0, 1.0, -1.0, -2.0, 2.0, 0.5, -0.5], [0, 0, 0, 0, 1, 2, 3, 4], [5, 0, 6, 0, 7, 0, 8, 0]]
    for t, row in enumerate(ties):  # ties within groups; a group's upper half; alternate channels
        rows[5 + t, 8 * t : 8 * t + 8] = torch.tensor(row).to(rows.dtype)
    mask = nm_topk_mask(rows.abs(), keep, 4)
    if fp8:
        vals, dense, slot = _fp8_slots(rows, mask, keep)
        vals[tokens - 1] = 0x7F  # a stale slot behind an invalid token (NaN as e4m3)
        vals, stride, dense = staged_slots(vals), slot, dense.to(torch.float16)
    else:
        slot = stride = padded_keep(keep, 2)
        vals = np.zeros((tokens, slot), dtype=np.uint16)
        for t in range(tokens):
            vals[t, :keep] = rows[t][mask[t]].view(torch.int16).numpy().view(np.uint16)
        vals[tokens - 1] = 0x7E00  # a stale slot behind an invalid token (NaN as fp16)
        vals, stride = staged_slots(vals.view(np.uint8)), 2 * slot
        dense = torch.where(mask, rows, torch.zeros_like(rows))
    words = pack_bitmap(mask).numpy().view(np.uint32)
    tile, valid = 8192, tokens - 1
    smem = np.full(tile + tokens * d * 2, 0xFF, dtype=np.uint8)  # the tile starts as garbage (NaN)
    smem[: words.nbytes] = words.reshape(-1).view(np.uint8)
    voff = words.nbytes
    smem[voff : voff + vals.nbytes] = vals.reshape(-1)
    asm = expand_asm(d, slot, fp8)
    for r in range(tokens):
        run_ptx(asm, [r * 4 * (d // 32), voff + r * stride, tile + r * 2 * d, int(r < valid)], smem, lane=r)
    dense[valid:] = 0
    assert np.array_equal(smem[tile:], _tile_image(dense, v_rows_offset))


def _staged_position(t: int, x: int, slot_bytes: int, fragments: bool = True) -> int:
    """Where byte ``x`` of token ``t``'s slot lands in the staged region (the image :func:`staged_slots` builds; by
    default as the fragment readers, its only users, see it)."""
    index = np.arange(32 * slot_bytes, dtype=np.int64).reshape(32, slot_bytes)
    return int(np.flatnonzero(staged_slots(index, fragments).reshape(-1) == t * slot_bytes + x)[0])


def _selector_entry(bits: int) -> int:
    """The fp8 selector table's entry for eight channels' kept bits, as _fill_selector_table documents it: position
    p's prmt nibble (the byte of its code, its rank among the kept, or 7, a byte that is zero in every expansion's
    second source, where it is not kept) at bit 4p: positions 0-3 in the low half-word, 4-7 in the high one."""
    kept = [p for p in range(8) if bits >> p & 1]
    nibbles = [kept.index(p) if p in kept else 7 for p in range(8)]
    return sum(n << 4 * p for p, n in enumerate(nibbles))


def _selector_table() -> np.ndarray:
    return np.array([_selector_entry(g) for g in range(256)], dtype=np.uint32)


def _kept_slots(
    rows: torch.Tensor, mask: torch.Tensor, keep: int, fp8: bool
) -> tuple[np.ndarray, torch.Tensor, int]:
    """The kept values of ``rows`` as the store's slots (uint8 [tokens, slot bytes]: fp16/bf16 values, or e4m3
    codes), the dense rows the expansions must give (fp8: the unscaled codes as fp16) and the slot's bytes."""
    if fp8:
        vals, dense, slot = _fp8_slots(rows, mask, keep)
        return vals, dense.to(torch.float16), slot
    slot = padded_keep(keep, 2)
    vals = np.zeros((rows.shape[0], slot), dtype=np.uint16)
    for t in range(rows.shape[0]):
        vals[t, :keep] = rows[t][mask[t]].view(torch.int16).numpy().view(np.uint16)
    return vals.view(np.uint8), torch.where(mask, rows, torch.zeros_like(rows)), 2 * slot


def _fragment_smem(words: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Shared memory as the fragment expansions see it: the bitmap words, the value slots staged for fragment
    reads (:func:`staged_slots`), the fp8 selector table after them."""
    table = _selector_table()
    smem = np.zeros(words.nbytes + vals.nbytes + table.nbytes, dtype=np.uint8)
    smem[: words.nbytes] = words.reshape(-1).view(np.uint8)
    smem[words.nbytes : words.nbytes + vals.nbytes] = staged_slots(vals, fragments=True).reshape(-1)
    smem[words.nbytes + vals.nbytes :] = table.view(np.uint8)
    return smem


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("values", ["fp16", "bf16", "fp8"])
def test_expand8_frag_ptx_gives_each_lane_its_dense_channel_pairs(d, values):
    """expand8_frag_asm against the plain-PyTorch dense keys (four of every eight kept, ties to the lower
    channel): for every token and 16-channel block, the eight registers are the block's dense pairs in order,
    low half the even channel; invalid tokens give zeros whatever their stale slots hold (fp8: through the
    selector table, placed after the slots)."""
    torch.manual_seed(d)
    tokens, keep, fp8, valid = 32, d // 2, values == "fp8", 29
    rows = torch.randn(tokens, d).to(torch.bfloat16 if values == "bf16" else torch.float16)
    rows[2, :8] = torch.tensor([1.0, -1.0, 1.0, -1.0, -2.0, 2.0, 0.5, -0.5]).to(rows.dtype)
    rows[4] = 0.0
    mask = nm_topk_mask(rows.abs(), keep, 8)
    vals, dense, slot_bytes = _kept_slots(rows, mask, keep, fp8)
    vals[valid:] = 0x7E  # stale slots behind invalid tokens
    words = pack_bitmap(mask).numpy().view(np.uint32)
    smem = _fragment_smem(words, vals)
    bits = dense.view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
    asm = expand8_frag_asm(fp8)
    for t in range(tokens):
        for ch in range(0, d, 16):
            x = (ch // 2) * (1 if fp8 else 2)
            ops = [0] * (8 + 5 * FRAG_PACK)
            (
                ops[7],
                ops[7 + FRAG_PACK],
                ops[7 + 2 * FRAG_PACK],
                ops[7 + 3 * FRAG_PACK],
                ops[7 + 4 * FRAG_PACK],
            ) = (
                t * d // 8 + 4 * (ch // 32),
                words.nbytes + _staged_position(t, x, slot_bytes),
                ch % 32,
                int(t < valid),
                words.nbytes + vals.nbytes,
            )
            regs = run_ptx(asm, ops, smem)
            got = [regs[f"${j}"] for j in range(8)]
            want = [int(bits[t, ch + 2 * j]) | int(bits[t, ch + 2 * j + 1]) << 16 for j in range(8)]
            assert got == (want if t < valid else [0] * 8), (t, ch)


def _nm16_rows(d: int, tokens: int, seed: int) -> tuple[torch.Tensor, np.ndarray, int]:
    """Rows kept five of every sixteen channels (ties to the lower channel) as e4m3 codes: their unscaled dense
    fp16 values, the store's 8-byte-padded slots (codes in ascending channel order) and the slot's bytes. Ties
    inside a group, all five in a group's low or high half, a zero row."""
    torch.manual_seed(seed)
    keep = 5 * d // 16
    rows = torch.randn(tokens, d, dtype=torch.float16) * 5
    rows[1, :16] = torch.tensor([1.0, -1.0] * 8).to(rows.dtype)
    rows[3] = 0.0
    rows[5, 8:16] = 0.0  # all five in the low half of group 0
    rows[6, :8] = 0.0  # all five in the high half
    rows[7, 16:24] = 0.0  # group 1: its codes straddle two slot words
    mask = nm_topk_mask(rows.abs(), keep, 16)
    vals, unscaled, slot = _fp8_slots(rows, mask, keep)
    return unscaled.to(torch.float16), vals, slot


@pytest.mark.parametrize("d", [64, 128])
def test_expand16_frag_ptx_gives_each_lane_its_dense_channel_pairs(d):
    """expand16_frag_asm against the plain-PyTorch dense codes (five of every sixteen kept, e4m3 unscaled), reading
    the store's own slot layout: for every token and group, the eight registers are the group's dense pairs in
    order; an invalid token gives zeros whatever its slot holds."""
    tokens, valid = 24, 21
    dense, vals, slot = _nm16_rows(d, tokens, d + 16)
    vals[valid:] = 0x7E  # stale slots behind invalid tokens
    mask = dense != 0
    words = pack_bitmap(nm_topk_mask(dense.abs(), 5 * d // 16, 16)).numpy().view(np.uint32)
    smem = _fragment_smem(words, vals)  # 40-byte slots: staged as they are
    voff, toff = words.nbytes, words.nbytes + vals.nbytes
    bits = dense.view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
    asm = expand16_frag_asm()
    assert mask.sum(-1).eq(5 * d // 16).sum() >= valid - 1  # only the zero row keeps zeros
    for t in range(tokens):
        for g in range(d // 16):
            ch = 16 * g
            word, shift = nm16_code_word(g)
            inputs = (
                t * d // 8 + 4 * (ch // 32),
                voff + t * slot + word,
                ch % 32,
                int(t < valid),
                toff,
                shift,
            )
            ops = [0] * (8 + len(inputs) * FRAG_PACK)
            for i, x in enumerate(inputs):
                ops[7 + i * FRAG_PACK] = x
            regs = run_ptx(asm, ops, smem)
            got = [regs[f"${j}"] for j in range(8)]
            want = [int(bits[t, ch + 2 * j]) | int(bits[t, ch + 2 * j + 1]) << 16 for j in range(8)]
            assert got == (want if t < valid else [0] * 8), (t, g)


def _movmatrix_trans(regs: list[int]) -> list[int]:
    """``movmatrix.sync.aligned.m8n8.trans.b16`` over a warp, as the PTX manual describes it: lane L holds row
    L div 4, elements 2(L mod 4) and + 1 (low half first) of an 8 × 8 matrix, and receives the same fragment of
    its transpose."""
    m = [[regs[4 * r + c // 2] >> 16 * (c % 2) & 0xFFFF for c in range(8)] for r in range(8)]
    return [m[2 * (lane % 4)][lane // 4] | m[2 * (lane % 4) + 1][lane // 4] << 16 for lane in range(32)]


def _check_transposed(
    asm: str, inputs: Callable[[int, int], tuple], smem: np.ndarray, dense: torch.Tensor
) -> None:
    """Run a ``transposed`` fragment expansion over a warp (its per-lane part in the interpreter with
    ``inputs(token, first channel)``, movmatrix applied across the lanes as documented) and check, for every half,
    token row j and pair m, that lane L's register m holds Vᵀ at the half's channel 16·(c div 2) + 2m + c mod 2
    (c = L div 4) and tokens 8j + 2(L mod 4), + 1: the P·V MMA's A-operand fragment in that fixed channel order."""
    tokens, d = dense.shape
    bits = dense.view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
    for half in range(d // 64):
        for j in range(tokens // 8):
            pre = []
            for lane in range(32):
                args = inputs(lane // 4 + 8 * j, 64 * half + 16 * (lane % 4))
                ops = [0] * (8 + len(args) * FRAG_PACK)
                for i, x in enumerate(args):
                    ops[7 + i * FRAG_PACK] = x
                regs = run_ptx(asm, ops, smem, lane=lane)
                pre.append([regs[f"${m}"] for m in range(8)])
            for m in range(8):
                for lane, reg in enumerate(_movmatrix_trans([pre[lane][m] for lane in range(32)])):
                    c, tok = lane // 4, 8 * j + 2 * (lane % 4)
                    channel = 64 * half + 16 * (c // 2) + 2 * m + c % 2
                    assert reg == int(bits[tok, channel]) | int(bits[tok + 1, channel]) << 16, (
                        half,
                        j,
                        m,
                        lane,
                    )


@pytest.mark.parametrize("d", [64, 128])
def test_expand16_transposed_ptx_gives_each_lane_its_vt_operand_fragment(d):
    """expand16_frag_asm(transposed=True) against the plain-PyTorch dense codes (five of sixteen, e4m3 unscaled):
    every lane's registers are its Vᵀ operand fragment (_check_transposed); invalid tokens are zero."""
    tokens, valid = 32, 27
    dense, vals, slot = _nm16_rows(d, tokens, d + 7)
    vals[valid:] = 0x7E
    words = pack_bitmap(nm_topk_mask(dense.abs(), 5 * d // 16, 16)).numpy().view(np.uint32)
    smem = _fragment_smem(words, vals)  # 40-byte slots: staged as they are
    voff, toff = words.nbytes, words.nbytes + vals.nbytes
    dense[valid:] = 0

    def inputs(t: int, ch: int) -> tuple:
        word, shift = nm16_code_word(ch // 16)
        return (t * d // 8 + 4 * (ch // 32), voff + t * slot + word, ch % 32, int(t < valid), toff, shift)

    _check_transposed(expand16_frag_asm(transposed=True), inputs, smem, dense)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("values", ["fp16", "bf16", "fp8"])
def test_expand8_transposed_ptx_gives_two_of_four_values_as_the_vt_operand(d, values):
    """expand8_frag_asm(transposed=True) on values kept two of every four channels (a 2:4 row is a 4:8 row, its
    values in rank order, in the store's staged slots) against the plain-PyTorch dense values (fp8: the unscaled
    codes): every lane's registers are its Vᵀ operand fragment (_check_transposed); invalid tokens are zero."""
    torch.manual_seed(d + 3)
    tokens, keep, fp8, valid = 32, d // 2, values == "fp8", 30
    rows = torch.randn(tokens, d).to(torch.bfloat16 if values == "bf16" else torch.float16)
    rows[5, :8] = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 0.5, -0.5]).to(rows.dtype)
    mask = nm_topk_mask(rows.abs(), keep, 4)
    vals, dense, slot_bytes = _kept_slots(rows, mask, keep, fp8)
    vals[valid:] = 0x7E
    dense[valid:] = 0
    words = pack_bitmap(mask).numpy().view(np.uint32)
    smem = _fragment_smem(words, vals)

    def inputs(t: int, ch: int) -> tuple:
        at = words.nbytes + _staged_position(t, (ch // 2) * (1 if fp8 else 2), slot_bytes)
        return (t * d // 8 + 4 * (ch // 32), at, ch % 32, int(t < valid), words.nbytes + vals.nbytes)

    _check_transposed(expand8_frag_asm(fp8, transposed=True), inputs, smem, dense)


def test_expand_ptx_refuses_other_slots():
    with pytest.raises(ValueError, match="slot of head_dim/2"):
        expand_asm(128, 19)


def _group_store(
    keep: int, group: int, strided: bool = False, value_dtype: str = "native"
) -> CompressedStore:
    return CompressedStore(
        1, 2, 128, torch.float16, "cpu", keep, nm_group=group, nm_strided=strided, value_dtype=value_dtype
    )


def test_strided_stores_reach_only_the_decoder_that_reads_their_order():
    """Strided N:M stores hold channels in the groups' order: only the scatter decoder's expanded keys (q loaded
    in that order) may read them; anything else is refused rather than decoded as if in channel order."""
    keys, values = _group_store(64, 8, strided=True), _group_store(64, 4)
    dispatch._check_store_order(keys, values, "scatter")  # the supported pairing, in fp16/bf16 or fp8
    fp8_keys = _group_store(64, 8, strided=True, value_dtype="fp8")
    dispatch._check_store_order(fp8_keys, _group_store(64, 4, value_dtype="fp8"), "scatter")
    dispatch._check_store_order(_group_store(64, 8), values, "portable")  # consecutive groups: channel order
    refused = [
        (keys, values, "portable"),  # no q permutation there
        (keys, values, "staged"),
        (_group_store(64, 4, strided=True), values, "scatter"),  # 2:4 strided keys: the word walk
        (keys, _group_store(64, 8, strided=True), "scatter"),  # strided values: the output would be permuted
        (keys, _group_store(64, 4, value_dtype="fp8"), "scatter"),  # fp8 values, fp16 keys: two tile types
        (_group_store(64, 8, strided=True, value_dtype="fp8"), values, "scatter"),
    ]
    for k, v, decoder in refused:
        with pytest.raises(ValueError, match="strided N:M stores .* nm_group="):
            dispatch._check_store_order(k, v, decoder)


def test_expanded_groups_are_the_ones_the_ptx_reads():
    """Which stores the scatter decoder expands: V two of four (any value type) or five of sixteen (fp8 codes),
    in channel order; K four of eight or five of sixteen (fp8) only beside an expanded V of the same value type.
    Everything else is walked or scattered by word (and a per-head V order is refused by dispatch)."""
    from mustafar.kernels.scatter_ptx import key_group, value_group

    def st(keep, group, values="fp8", order=False):
        s = _group_store(keep, group, value_dtype=values)
        if order:
            s.set_head_order(torch.arange(128).repeat(1, 2, 1))
        return s

    assert value_group(st(64, 4, "native")) == value_group(st(64, 4)) == 4
    assert value_group(st(40, 16)) == 16
    assert value_group(st(40, 16, "native")) == 0  # fp16 5:16 rows: no expansion yet, scattered by word
    assert value_group(st(32, 16)) == 0  # four of sixteen
    assert value_group(st(40, 16, order=True)) == 0  # its rows would come out permuted
    v16 = st(40, 16)
    assert key_group(st(40, 16), v16) == key_group(st(40, 16, order=True), v16) == 16
    assert key_group(st(40, 16), st(64, 4)) == 16  # any expanded V of the same value type
    assert key_group(st(40, 16, "native"), st(64, 4, "native")) == 0
    assert key_group(st(40, 16), st(40, 16, "native")) == 0
    assert key_group(st(64, 8), st(64, 4)) == 8
    dispatch._check_store_order(st(40, 16, order=True), v16, "scatter")
    for k, v, decoder in (
        (st(40, 16, order=True), v16, "staged"),
        (st(40, 16), st(40, 16, order=True), "scatter"),
    ):
        with pytest.raises(ValueError, match="per-head channel order"):
            dispatch._check_store_order(k, v, decoder)


def test_dispatch_picks_scatter_only_for_word_quota_stores(monkeypatch):
    monkeypatch.setattr(dispatch, "gluon_capable", lambda device: True)
    q = torch.zeros(1, 8, 128, dtype=torch.float16)
    quota = CompressedStore(1, 2, 128, torch.float16, "cpu", 38, word_quota=True)
    plain = CompressedStore(1, 2, 128, torch.float16, "cpu", 38)
    assert store_quotas(quota) == word_quotas(128, 38) == (10, 10, 9, 9)
    assert store_quotas(plain) is None
    assert dispatch.decoder_for(q, quota, quota) == "scatter"
    assert dispatch.decoder_for(q, quota, plain) == "staged"
    assert dispatch.decoder_for(q.float(), quota, quota) == "portable"
    # a GQA group of more than 8 query heads has no scatter scores: the staged decoder serves it
    assert dispatch.decoder_for(torch.zeros(1, 18, 128, dtype=torch.float16), quota, quota) == "staged"


def test_pruned_stores_without_word_quotas_get_one_hint_on_a_scatter_gpu(monkeypatch):
    """Compressed mode's default `exact` rule packs stores the scatter decoder cannot read: on a GPU that runs it,
    the op says so once per process, naming kv.keep_rule=word; word-quota stores, a side kept whole (its store is
    plain under any rule), GQA groups past the scatter scores and CPUs say nothing."""
    import warnings

    monkeypatch.setattr(support, "_WARNED", set())
    monkeypatch.setattr(dispatch, "gluon_capable", lambda device: True)
    q = torch.zeros(1, 8, 128, dtype=torch.float16)
    quota = CompressedStore(1, 2, 128, torch.float16, "cpu", 38, word_quota=True)
    plain = CompressedStore(1, 2, 128, torch.float16, "cpu", 38)
    whole = CompressedStore(1, 2, 128, torch.float16, "cpu", 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch._checked_decoder(q, quota, quota) == "scatter"
        assert (
            dispatch._checked_decoder(q, plain, whole) == "staged"
        )  # V dense: no rule would make it a quota store
        assert (
            dispatch._checked_decoder(torch.zeros(1, 18, 128, dtype=torch.float16), plain, plain) == "staged"
        )
    with pytest.warns(UserWarning, match=r"runs the staged decoder.*kv\.keep_rule=word"):
        assert dispatch._checked_decoder(q, plain, plain) == "staged"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatch._checked_decoder(q, plain, plain)  # once per process
        monkeypatch.setattr(support, "_WARNED", set())
        monkeypatch.setattr(dispatch, "gluon_capable", lambda device: False)
        assert dispatch._checked_decoder(q, plain, plain) == "portable"


def test_public_op_decides_the_decoder_once_per_layout(monkeypatch):
    """sparse_decode_attention's decoder choice and store-order check are cached per layout with its launch
    configuration (the stores' layout_key, q's dtype and heads): decoder_for runs once per key, stores differing
    in one layout field get their own decision, and a refused layout raises on every call (never cached)."""
    decode = importlib.import_module("mustafar.kernels.decode")
    monkeypatch.setattr(dispatch, "gluon_capable", lambda device: True)
    monkeypatch.setattr(decode, "_PUBLIC_CONFIGS", {})
    calls = []
    real = dispatch.decoder_for
    monkeypatch.setattr(dispatch, "decoder_for", lambda *a: calls.append(1) or real(*a))
    q = torch.zeros(1, 8, 128, dtype=torch.float16)
    quota = CompressedStore(1, 2, 128, torch.float16, "cpu", 38, word_quota=True)
    plain = CompressedStore(1, 2, 128, torch.float16, "cpu", 38)
    for _ in range(3):
        assert dispatch._config_for(decode, q, quota, quota).decoder == "scatter"
    assert dispatch._config_for(decode, q, plain, plain).decoder == "staged"
    quota_bf16 = CompressedStore(1, 2, 128, torch.bfloat16, "cpu", 38, word_quota=True)
    assert dispatch._config_for(decode, q.bfloat16(), quota_bf16, quota_bf16).decoder == "scatter"
    assert len(calls) == 3
    strided = CompressedStore(1, 2, 128, torch.float16, "cpu", 64, nm_group=4, nm_strided=True)
    for _ in range(2):
        with pytest.raises(ValueError, match="strided N:M stores"):
            dispatch._config_for(decode, q, strided, strided)
    assert len(calls) == 5


@pytest.mark.parametrize(
    "d,keep,n_rep,dtype",
    [
        (128, 38, 4, torch.float16),
        (128, 64, 3, torch.float16),
        (128, 38, 8, torch.bfloat16),
        (64, 19, 1, torch.float16),
        (64, 32, 7, torch.bfloat16),
    ],
)
def test_score_ptx_equals_dense_keys_times_queries(d, keep, n_rep, dtype):
    torch.manual_seed(d + keep + n_rep)
    tokens, valid = 32, 27  # lanes >= valid walk zero words; their scores are not read
    rows = torch.randn(tokens, d, dtype=dtype)
    rows[5] = 0.0  # an all-zero token keeps `keep` zeros
    q = torch.randn(n_rep, d, dtype=dtype)
    mask = word_topk_mask(rows.float().abs(), keep)
    slot = padded_keep(keep, 2)
    words = pack_bitmap(mask).numpy().view(np.uint32)
    vals = np.zeros((tokens, slot), dtype=np.uint16)
    bits16 = rows.view(torch.int16).numpy().view(np.uint16)
    for t in range(tokens):
        vals[t, :keep] = bits16[t][mask[t].numpy()]
    smem = np.zeros(words.nbytes + vals.nbytes, dtype=np.uint8)
    smem[: words.nbytes] = words.reshape(-1).view(np.uint8)
    smem[words.nbytes :] = staged_slots(vals.view(np.uint8)).reshape(-1)
    pairs = query_pairs(q, d)
    ops = [[r * 4 * (d // 32), words.nbytes + r * 2 * slot, int(r < valid)] + pairs[r] for r in range(32)]
    out = np.array(run_warp(score_asm(d, keep, slot, n_rep, dtype == torch.bfloat16), ops, smem))
    dense = torch.where(mask, rows, torch.zeros_like(rows)).double()
    expect = dense @ q.double().T
    np.testing.assert_allclose(out[:valid, :n_rep], expect[:valid].numpy(), rtol=1e-5, atol=1e-5)
    assert (out[:, n_rep:] == 0).all()


def test_score_ptx_refuses_groups_over_eight_heads():
    with pytest.raises(ValueError, match="1 to 8 query heads, got 9"):
        score_asm(128, 38, 40, 9, False)


def _fp8_slots(rows: torch.Tensor, mask: torch.Tensor, keep: int) -> tuple[np.ndarray, torch.Tensor, int]:
    """Each token's kept values as e4m3 codes in an 8-byte-padded slot, and the codes' unscaled values."""
    codes, _ = quantize(rows, mask)
    slot = padded_keep(keep, 1, 8)
    vals = np.zeros((rows.shape[0], slot), dtype=np.uint8)
    for t in range(rows.shape[0]):
        vals[t, :keep] = codes[t][mask[t]].numpy()
    unscaled = codes.view(torch.float8_e4m3fn).float().masked_fill(~mask, 0)
    return vals, unscaled, slot


@pytest.mark.parametrize("d,keep", [(128, 38), (128, 64), (64, 19), (64, 3)])
def test_scatter_ptx_fp8_writes_the_codes_into_the_e4m3_tile(d, keep):
    torch.manual_seed(keep + 1)
    tokens, valid, tile = 32, 29, 8192
    rows = torch.randn(tokens, d, dtype=torch.float16) * 7
    mask = word_topk_mask(rows.abs(), keep)
    vals, unscaled, slot = _fp8_slots(rows, mask, keep)
    words = pack_bitmap(mask).numpy().view(np.uint32)
    smem = np.zeros(tile + tokens * d * 2, dtype=np.uint8)
    smem[: words.nbytes] = words.reshape(-1).view(np.uint8)
    voff = words.nbytes
    smem[voff : voff + vals.nbytes] = staged_slots(vals).reshape(-1)
    asm = scatter_asm(d, keep, slot, fp8=True)
    for r in range(tokens):
        run_ptx(
            asm,
            [r * 4 * (d // 32), voff + r * slot, *column8_operands(r, tile, d), int(r < valid)],
            smem,
            lane=r,
        )
    expect = np.zeros(tokens * d * 2, dtype=np.uint8)  # the e4m3 tile takes the first half; the rest stays 0
    codes = unscaled.to(torch.float8_e4m3fn).view(torch.uint8).numpy()  # exact: the unscaled codes' values
    for r in range(valid):
        for c in range(d):
            expect[tile8_offset(r, c, d)] = codes[r, c]
    assert np.array_equal(smem[tile:], expect)


def half_query_pairs(q: torch.Tensor, d: int) -> tuple[list[list[int]], torch.Tensor]:
    """score_asm(fp8=True)'s query pairs: each head of q times the power of two 2^e that puts its largest magnitude
    in [B/2, B) (B = HALF_SCORE_Q_BOUND, from frexp: max = m·2^x, m in [0.5, 1)), as fp16; and the 2^e [heads]."""
    x = torch.tensor([math.frexp(m)[1] for m in q.double().abs().amax(-1).tolist()], dtype=torch.float64)
    scale = 2.0 ** (math.log2(HALF_SCORE_Q_BOUND) - x)
    return query_pairs((q.double() * scale[:, None]).half(), d), scale


def _fp8_scores(rows: torch.Tensor, mask: torch.Tensor, q: torch.Tensor, keep: int, valid: int):
    """Run score_asm(fp8=True) over a warp of tokens: the scores with q's scale divided out, and the codes."""
    d, n_rep = rows.shape[1], q.shape[0]
    vals, unscaled, slot = _fp8_slots(rows, mask, keep)
    words = pack_bitmap(mask).numpy().view(np.uint32)
    smem = np.zeros(words.nbytes + vals.nbytes, dtype=np.uint8)
    smem[: words.nbytes] = words.reshape(-1).view(np.uint8)
    smem[words.nbytes :] = staged_slots(vals).reshape(-1)
    pairs, scale = half_query_pairs(q, d)
    ops = [[r * 4 * (d // 32), words.nbytes + r * slot, int(r < valid)] + pairs[r] for r in range(32)]
    out = np.array(run_warp(score_asm(d, keep, slot, n_rep, q.dtype == torch.bfloat16, fp8=True), ops, smem))
    out[:, :n_rep] /= scale.numpy()
    return out, unscaled


def _half_walk_bound(unscaled: torch.Tensor, q: torch.Tensor, keep: int) -> np.ndarray:
    """The fp16 walk's error bound: each packed fma rounds its partial (at most 2^-11 relative), a word's partial
    never exceeds the sum of its products' magnitudes, and a word takes at most max(quotas) steps; q's own
    rounding to fp16 adds 2^-11 of each product."""
    steps = max(word_quotas(unscaled.shape[1], keep)) + 1
    return (steps * 2.0**-11 * (unscaled.double().abs() @ q.double().abs().T)).numpy()


@pytest.mark.parametrize(
    "d,keep,n_rep,dtype",
    [(128, 38, 4, torch.float16), (128, 64, 8, torch.bfloat16), (64, 19, 2, torch.bfloat16)],
)
def test_score_ptx_fp8_scores_the_unscaled_codes(d, keep, n_rep, dtype):
    torch.manual_seed(d + keep)
    tokens, valid = 32, 29
    rows = torch.randn(tokens, d, dtype=dtype) * 3
    q = torch.randn(n_rep, d, dtype=dtype) * 40  # past fp16's range once multiplied by codes near 448
    q[-1] *= 2.0**-20  # a head far below the others keeps its own precision (per-head scales)
    mask = word_topk_mask(rows.float().abs(), keep)
    out, unscaled = _fp8_scores(rows, mask, q, keep, valid)
    expect = (unscaled.double() @ q.double().T).numpy()
    err = np.abs(out[:valid, :n_rep] - expect[:valid])
    assert (err <= _half_walk_bound(unscaled, q, keep)[:valid] + 1e-9).all()
    assert np.median(err / np.abs(expect[:valid]).clip(1e-3)) < 1e-3  # typically far inside the bound
    assert (out[:, n_rep:] == 0).all()


def test_score_ptx_fp8_partials_stay_finite_at_the_largest_codes_and_queries():
    """A full word of e4m3's largest code against q at the top of its scaled range: the partial sum, 32 · 448 ·
    (just under the bound), is the largest the walk can meet and must stay under fp16's 65,504."""
    d, keep = 128, 128
    rows = torch.full((32, d), 448.0, dtype=torch.float16)
    rows[3] *= -1
    q = torch.full((2, d), HALF_SCORE_Q_BOUND * (1 - 2**-10), dtype=torch.float16)
    q[1] *= 1 - 2 * (torch.arange(d) % 2)  # products that cancel
    mask = torch.ones(32, d, dtype=torch.bool)
    out, unscaled = _fp8_scores(rows, mask, q, keep, 32)
    assert unscaled.abs().max() == 448  # the codes are e4m3's largest
    expect = (unscaled.double() @ q.double().T).numpy()
    assert np.isfinite(out).all()
    assert (np.abs(out[:, :2] - expect) <= _half_walk_bound(unscaled, q, keep) + 1e-9).all()
