"""Round 13 notes: does any walk order or per-block channel offset cut the fp16 scatter's bank conflicts?

Monte Carlo on scripts/scatter_banks.py's model (token-block tile of round 12, 200 trials): each row prints the
scatter wavefronts per 32-token tile at s 0.7 and s 0.5. python results/kernels/scatter_h200/run7/scatter_orders.py
"""

import sys
from pathlib import Path

import numpy as np

root = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(root), str(root / "scripts")]
import scatter_banks as sb  # noqa: E402

from mustafar.pruning.keep import exact_keep  # noqa: E402


def ordered(order, s, trials=200, d=128):
    """Wavefronts when lane r stores its kept values in ``order(r, descending bits, rng)``."""
    return sb.tile_wavefronts(sb.token_blocks, d, exact_keep(d, s), trials, order=order)


ORDERS = {
    "descending, every lane (the kernel)": lambda r, b, rng: b,
    "ascending in odd 8-token blocks": lambda r, b, rng: b if (r // 8) % 2 == 0 else b[::-1],
    "ascending in odd lanes": lambda r, b, rng: b if r % 2 == 0 else b[::-1],
    "rotated by the lane": lambda r, b, rng: np.roll(b, r),
    "random per lane": lambda r, b, rng: rng.permutation(b),
}


def block_offsets(phi, xor):
    def layout(r, c, d):
        k = r // 8
        return 2 * (k * 8 * d + 8 * ((c ^ phi[k]) if xor else (c + phi[k]) % d) + r % 8)

    return layout


print("| walk order | s 0.7 | s 0.5 |\n|---|---|---|")
for name, order in ORDERS.items():
    print(f"| {name} | {ordered(order, 0.7):.1f} | {ordered(order, 0.5):.1f} |")
print("\n| channel offset per 8-token block | s 0.7 | s 0.5 |\n|---|---|---|")
for phi in [(0, 4, 0, 4), (0, 2, 4, 6), (0, 4, 2, 6), (0, 1, 2, 3)]:
    for xor in (True, False):
        lay = block_offsets(phi, xor)
        cells = [sb.tile_wavefronts(lay, 128, exact_keep(128, s), 200) for s in (0.7, 0.5)]
        print(f"| {'XOR' if xor else '+'} {phi} | {cells[0]:.1f} | {cells[1]:.1f} |")
