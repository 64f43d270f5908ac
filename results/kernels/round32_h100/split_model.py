"""Round 32: the split plans under a round-robin model of the block scheduler (no GPU): block i of the grid
(b fastest, then KV head, then split) lands on SM i mod 132, every program of a row's split s runs that split's
tiles, and an SM's load is the sum of its programs' tiles. Rounded-up shares against balanced ones, at the wave
model's split count for the H100's 132 SMs and 12 resident programs (Llama-3-8B: 8 KV heads, 32-token tiles).

    PYTHONPATH=. python results/kernels/round32_h100/split_model.py > results/kernels/round32_h100/split_model.txt
"""

from mustafar.kernels.decode import _split_plan
from mustafar.kernels.support import cdiv

SMS, RESIDENT, HEADS_KV, TILE = 132, 12, 8, 32

for b, t in ((8, 16384), (8, 32768), (16, 16384), (32, 16384), (1, 16384), (1, 32768)):
    rows = b * HEADS_KV
    tiles = cdiv(t, TILE)
    loads = {}
    for balanced in (False, True):
        splits, share, long = _split_plan(rows, t, TILE, SMS * RESIDENT, None, balanced)
        per = [min(share // TILE + (s < long), max(0, tiles - (s * share // TILE + min(s, long)))) for s in range(splits)]
        sm = [0] * SMS
        for i, work in enumerate(w for w in per for _ in range(rows)):
            sm[i % SMS] += work
        loads[balanced] = (splits, max(per), max(sm), sum(sm) / SMS)
    (s, longest, rounded, mean), (_, _, balanced, _) = loads[False], loads[True]
    print(f"B {b:2d} / {t // 1024}K: {s} splits, longest program {longest} tiles; busiest SM {rounded} tiles rounded "
          f"up, {balanced} balanced ({100 * (balanced / rounded - 1):+.1f} %), mean {mean:.1f}")  # fmt: skip
