"""The scatter decoder's shared-memory plan, checked without a GPU: the ring chosen for hand-worked sizes, and
the compiled sm_90 kernel (Triton's bundled ptxas) placing the dense tile where the scatter PTX writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mustafar.kernels import decode

pytest.importorskip("triton.experimental.gluon")


@pytest.mark.parametrize(
    "tile,side,expect",
    [
        # D=128 s=0.7 (slot 40, 3 KB sides): 8 KB tile + 9 KB ring is 24 KB split, 32 KB in one allocation
        (8192, 3072, (3, 4096, True)),
        # D=128 s=0.9 (slot 16, 1.5 KB sides): a 4.5 KB ring rounds to 8 KB either way; a tie keeps one allocation
        (8192, 1536, (3, 4096, False)),
        # a ring smaller than the tile cannot go first: one allocation
        (8192, 1024, (3, 4096, False)),
    ],
)
def test_ring_takes_three_sides_in_the_smaller_layout(tile, side, expect):
    assert decode._scatter_ring(tile, side) == expect


def _compile_offline(head_dim: int, sparsity: float, value_dtype: str = "native") -> dict:
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
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "head_dim,sparsity,value_dtype",
    [(128, 0.7, "native"), (128, 0.5, "native"), (64, 0.7, "native"), (128, 0.7, "fp8"), (128, 0.5, "fp8")],
)
def test_compiled_kernel_puts_the_tile_where_the_ptx_scatters(head_dim, sparsity, value_dtype):
    k = _compile_offline(head_dim, sparsity, value_dtype)
    ring = 4 * k["smem_words"]
    tile = k["block_n"] * head_dim * 2
    assert k["sides"] * k["slot_bytes"] <= (ring if k["split"] else ring - tile)
    if k["split"]:  # the ring's allocation first (offset 0), the tile's after it: the PTX's TILE_OFF
        assert k["shared_offsets"][0] == ring
        used = ring + tile
    else:  # one allocation: the tile at 0, the ring after it
        used = ring
    # anything else the compiler allocates (the scores' layout conversion) lies past the tile and the ring
    assert all(off >= used for off in k["shared_offsets"] if off != ring or not k["split"])
    assert k["shared_bytes"] >= used
    assert k["spill_bytes"] == 0


@pytest.mark.parametrize(
    "slot,chunk,stride",
    [
        (128, 16, 144),
        (80, 16, 80),
        (96, 16, 112),
        (48, 16, 48),
        (64, 16, 80),
        (64, 8, 72),
        (40, 8, 40),
        (32, 8, 40),
    ],
)
def test_staged_stride_spreads_the_lanes_slot_loads_over_the_banks(slot, chunk, stride):
    """fp16 s 0.5 / 0.7 at D 128 (128, 80 B), D 64 (64 → as 16-byte chunks: 80), fp8 (64, 40, 24, 32 B in 8-byte
    chunks): hand-worked strides, and the property they buy: the 32 lanes' first vectors (lane r at r·stride) fall
    into as many distinct chunk-sized bank groups of a 128-byte bank row as a conflict-free load needs."""
    assert decode._staged_stride(slot, chunk) == stride
    groups = {(r * stride % 128) // chunk for r in range(32)}
    assert len(groups) == 128 // chunk  # every group of the bank row: 32 lanes in the minimum of wavefronts
