"""The scatter decoder's shared-memory plan, checked without a GPU: the ring chosen for hand-worked sizes, and
the compiled sm_90 kernel (Triton's bundled ptxas) placing the dense tile where the scatter PTX writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mustafar.formats import CompressedStore
from mustafar.kernels import decode

pytest.importorskip("triton.experimental.gluon")


@pytest.mark.parametrize(
    "tile,side,sides,extra,words",
    [
        # D=128 s=0.7 (slot 40, 3 KB sides): 9 KB exactly (2304 words), where a power of two took 16 KB
        (8192, 3072, 3, 0, 2304),
        # D=128 s=0.5 (slot 128 staged at 144: 5 KB sides)
        (8192, 5120, 3, 0, 3840),
        # a ring as large as the tile gets 256 bytes more: the kernel puts the larger allocation first
        (8192, 4096, 2, 0, 2112),
        # fp8 K 4:8 + V 2:4 at D=128: two 2,688-byte sides and the 1 KB selector table after them
        (8192, 2688, 2, 1024, 1600),
    ],
)
def test_ring_holds_its_sides_exactly(tile, side, sides, extra, words):
    assert decode._scatter_ring(tile, side, sides, extra) == words


def _store(keep: int, value_dtype: str = "native", d: int = 128) -> CompressedStore:
    return CompressedStore(
        1, 1, d, torch.float16, "cpu", keep, capacity=32, word_quota=True, value_dtype=value_dtype
    )


@pytest.mark.parametrize(
    "keep,value_dtype,d,side,expect",
    [
        (38, "native", 128, 3072, (168, 2)),  # s 0.7: 80-byte slots, a third warp, two 3-KB sides
        (64, "native", 128, 5120, (224, 3)),  # s 0.5: 128-byte slots spill at 168, two warps
        (38, "fp8", 128, 1920, (168, 3)),  # fp8 s 0.7: small sides keep three in flight
        (64, "fp8", 128, 3200, (168, 3)),  # fp8 s 0.5: 3.2-KB sides, but two spill more than three
        (32, "native", 64, 2816, (168, 3)),  # D 64 s 0.5: 64-byte slots
    ],
)
def test_register_cap_and_ring_depth_follow_the_value_slots(keep, value_dtype, d, side, expect):
    st = _store(keep, value_dtype, d)
    assert decode._scatter_plan(st, st, side, 4) == expect


@pytest.mark.parametrize(
    "value_dtype,d,keep,n_rep,expect",
    [
        (
            "native",
            128,
            64,
            4,
            (168, 2),
        ),  # s 0.5 fp16: no V scatter chains, 168 / two sides (224 / three with word V)
        ("fp8", 128, 64, 4, (168, 2)),
        ("native", 64, 32, 1, (168, 2)),
        ("native", 128, 64, 7, (224, 3)),  # larger GQA groups keep 224 as the walk's queries need
    ],
)
def test_expanded_values_launch_at_168_registers_and_two_sides(value_dtype, d, keep, n_rep, expect):
    k = _store(keep, value_dtype, d)
    v = CompressedStore(1, 1, d, torch.float16, "cpu", keep, capacity=32, nm_group=4, value_dtype=value_dtype)
    assert decode.expands_values(v) and not decode.expands_values(k)
    assert decode._scatter_plan(k, v, 5120, n_rep) == expect


def test_only_two_of_four_value_stores_are_expanded():
    one_of_four = CompressedStore(1, 1, 128, torch.float16, "cpu", 32, capacity=32, nm_group=4)
    two_of_eight = CompressedStore(1, 1, 128, torch.float16, "cpu", 64, capacity=32, nm_group=8)
    assert not decode.expands_values(one_of_four) and not decode.expands_values(two_of_eight)


@pytest.mark.parametrize("n_rep,expect", [(1, (168, 2)), (4, (168, 2)), (7, (224, 3)), (8, (224, 3))])
def test_groups_over_four_query_heads_keep_224_registers(n_rep, expect):
    st = _store(38)  # D 128 s 0.7: the 168 cap with four heads or fewer
    assert decode._scatter_plan(st, st, 3072, n_rep) == expect


def _compile_offline(
    head_dim: int, sparsity: float, value_dtype: str = "native", v_nm_group: int = 0, k_nm_group: int = 0
) -> dict:
    """Compile in a fresh process: this test session may run Triton in interpret mode, which cannot compile."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [
        sys.executable,
        "-m",
        "mustafar.bench.offline",
        "--head-dim",
        str(head_dim),
        "--sparsity",
        str(sparsity),
        "--value-dtype",
        value_dtype,
        "--v-nm-group",
        str(v_nm_group),
        "--k-nm-group",
        str(k_nm_group),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "head_dim,sparsity,value_dtype,v_nm_group,k_nm_group",
    [
        (128, 0.7, "native", 0, 0),
        (128, 0.5, "native", 0, 0),
        (64, 0.7, "native", 0, 0),
        (128, 0.9, "native", 0, 0),  # a ring smaller than the tile: the tile's allocation first
        (128, 0.7, "fp8", 0, 0),
        (128, 0.5, "fp8", 0, 0),
        (128, 0.5, "native", 4, 0),  # V kept 2:4: rows expanded into a [tokens, D] tile
        (128, 0.5, "fp8", 4, 0),  # codes widened into the same fp16 tile
        (128, 0.5, "native", 4, 8),  # K kept 4:8 too: its rows expanded into the same tile
    ],
)
def test_compiled_kernel_puts_the_tile_where_the_ptx_scatters(
    head_dim, sparsity, value_dtype, v_nm_group, k_nm_group
):
    k = _compile_offline(head_dim, sparsity, value_dtype, v_nm_group, k_nm_group)
    ring = 4 * k["smem_words"]
    e4m3 = value_dtype == "fp8" and not v_nm_group
    tile = k["block_n"] * head_dim * (1 if e4m3 else 2)  # scattered fp8: the e4m3 tile
    assert k["sides"] * k["slot_bytes"] <= ring
    # the larger allocation at 0, the other right after it (the kernel's REGION and TILE_OFF). Only the tile's
    # accesses are compiled code (the ring is addressed by the PTX): a ring first shows the tile at offset ``ring``;
    # a tile first shows no offset below both; anything else the compiler allocates (the scores' layout
    # conversion) lies past both
    offsets = k["shared_offsets"]
    from mustafar.kernels import decode

    # values in the MMA operand (5:16 always, 2:4 per value type): no tile
    tile_used = not (v_nm_group == 16 or (v_nm_group and value_dtype in decode.VALUES_IN_OPERAND))
    tile = tile if tile_used else 0  # not allocated either
    if ring > tile and tile_used:
        assert offsets[0] == ring
        offsets = offsets[1:]
    assert all(off >= ring + tile for off in offsets)
    assert ring + tile <= k["shared_bytes"] <= ring + tile + 1024  # exact: no power-of-two rounding
    # the 168-register cap spills a little (round 10: 160-240 bytes at these shapes, the price of a third warp per
    # scheduler); the fp16 s 0.5 slots would spill 400 bytes, which is why they keep 224
    assert k["spill_bytes"] <= 256


@pytest.mark.parametrize(
    "slot,chunk,stride",
    [
        (128, 16, 128),  # whole 128-byte slots: unpadded, swizzled
        (256, 16, 256),
        (80, 16, 80),
        (96, 16, 112),
        (48, 16, 48),
        (64, 16, 64),  # two tokens to a 128-byte row, swizzled (fp16 D 64 s 0.5, fp8 D 128 s 0.5)
        (32, 16, 32),  # four to a row
        (64, 8, 72),
        (40, 8, 40),
        (32, 8, 40),
    ],
)
def test_staged_stride_spreads_the_lanes_slot_loads_over_the_banks(slot, chunk, stride):
    """fp16 s 0.5 / 0.7 at D 128 (128, 80 B), D 64 (64 B), fp8 (64, 40, 24, 32 B; 8-byte chunks where 16 do not
    divide): hand-worked strides, and the property they buy: the 32 lanes' first vectors (lane r at r·stride, or in
    swizzled slots at its row's chunk XOR (row mod 8), a row being a 128-byte slot or 128 / slot tokens) fall into
    as many distinct chunk-sized bank groups of a 128-byte bank row as a conflict-free load needs."""
    assert decode._staged_stride(slot, chunk) == stride
    per_row = max(128 // slot, 1) if chunk == 16 and (slot % 128 == 0 or slot in (32, 64)) else 0
    if per_row:  # chunk 0 of lane r: its place in the row, XOR the row's index mod 8
        groups = {((r % per_row) * slot // 16) ^ ((r // per_row) % 8) for r in range(32)}
    else:
        groups = {r * stride % 128 // chunk for r in range(32)}
    assert len(groups) == 128 // chunk  # every group of the bank row: 32 lanes in the minimum of wavefronts


def _fragment_load_wavefronts(slot: int, d: int, fragments: bool) -> list[int]:
    """Shared-memory wavefronts of each fragment load of one staged side (the expanded keys' and the operand
    values' reads): lane L reads token L div 4 + 8j, its 16 channels 64·h + 16·(L mod 4), i.e. 8 bytes of fp8
    codes (128 / 64-byte slots hold fp16 / fp8 at D 128, keep d / 2) at byte x of its slot; a warp's 8- or
    16-byte loads go in phases of 16 or 8 lanes, and a phase takes as many wavefronts as its most-loaded bank has
    distinct words."""
    from mustafar.kernels.scatter_ptx import row_xor

    width = 16 if slot == d else 8  # fp16 values: a slot of d bytes at keep d / 2
    cpt = slot // 16
    out = []
    for h in range(d // 64):
        for j in range(4):
            phase = 128 // width
            for p in range(0, 32, phase):
                banks: dict[int, set[int]] = {}
                for lane in range(p, p + phase):
                    t, i = lane // 4 + 8 * j, lane % 4
                    x = (64 * h + 16 * i) * width // 16
                    c = t * cpt + x // 16
                    at = (c ^ row_xor(c // max(cpt, 8), slot, fragments)) * 16 + x % 16
                    for w in range(at // 4, (at + width) // 4):
                        banks.setdefault(w % 32, set()).add(w)
                out.append(max(len(v) for v in banks.values()))
    return out


@pytest.mark.parametrize("slot,d", [(64, 128), (128, 128), (32, 64), (64, 64)])
def test_fragment_swizzle_makes_every_fragment_load_conflict_free(slot, d):
    """Staged slots read as MMA fragments (fp8 64-byte and fp16 128-byte slots at D 128, 32- and 64-byte at D 64):
    with scatter_ptx.row_xor's fragment rotation every load phase takes one wavefront; the lane-per-token XOR
    (row mod 8) doubled that at D 128 (results/kernels/NOTES.md, round 24, where Nsight counted the conflicts)."""
    assert set(_fragment_load_wavefronts(slot, d, fragments=True)) == {1}
    plain = _fragment_load_wavefronts(slot, d, fragments=False)
    assert set(plain) == ({2} if d == 128 else {1})


def test_kernels_row_xor_is_the_documented_one():
    """The Gluon copy and readers restate scatter_ptx.row_xor (Triton's dependency scan refuses plain Python calls
    from kernels): run the kernel function's Python body on plain ints and compare, for every row, slot size and
    read pattern, so the conflict-free property the bank model checks holds for what the GPU runs."""
    from mustafar.kernels.decode_staged import _row_xor
    from mustafar.kernels.scatter_ptx import row_xor

    for cpt in (2, 4, 8, 16):
        for fragments in (False, True):
            got = [_row_xor.fn(r, cpt, fragments) for r in range(24)]
            assert got == [row_xor(r, 16 * cpt, fragments) for r in range(24)]
            assert sorted(got[:8]) == list(range(8))  # a permutation of the eight chunk positions
