"""Monte Carlo of the scatter decoder's shared-memory bank conflicts under candidate dense-tile layouts.

One warp stores one kept value per lane per step (lane r = token r, the step-th highest kept bit of its bitmap
word, kept positions random as top-|v| of random data are); a 2-byte store's wavefronts are the most distinct
4-byte words any one bank receives. Prints the wavefronts per 32-token tile of each layout (the notes' round 10-12
predictions: results/kernels/NOTES.md).

python scripts/scatter_banks.py [--head-dim 128] [--trials 300]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mustafar.pruning.keep import exact_keep, word_quotas  # noqa: E402

Layout = Callable[[int, int, int], int]  # (token r, channel c, head_dim) -> byte offset in the tile


def row_major_swizzled(r: int, c: int, d: int) -> int:
    """Rounds 7-10: [32, D], SwizzledSharedLayout(8, 1, 8)."""
    return r * 2 * d + 2 * (c ^ ((r % 8) << 3))


def transposed_halves(r: int, c: int, d: int) -> int:
    """Round 11: Vᵀ of two 16-token halves, [2D, 16], SwizzledSharedLayout(8, 4, 2)."""
    i, j = (r // 16) * d + c, r % 16
    return 2 * (i * 16 + ((j // 8) ^ ((i // 4) % 2)) * 8 + j % 8)


def token_blocks(r: int, c: int, d: int) -> int:
    """Round 12: Vᵀ as four [D, 8] blocks of 8 tokens, odd blocks' channels XOR 4."""
    k = r // 8
    return 2 * (k * 8 * d + 8 * (c ^ (4 * (k % 2))) + r % 8)


def e4m3_token_blocks(r: int, c: int, d: int) -> int:
    """Round 13, fp8 stores: the codes' Vᵀ as two [D, 16] blocks of 16 tokens (one byte each), block k's
    channels XOR 4·k."""
    k = r // 16
    return k * 16 * d + 16 * (c ^ (4 * k)) + r % 16


LAYOUTS: dict[str, Layout] = {
    "row-major swizzled (rounds 7-10)": row_major_swizzled,
    "transposed halves (round 11)": transposed_halves,
    "token blocks (round 12)": token_blocks,
    "e4m3 token blocks (round 13, fp8 stores)": e4m3_token_blocks,
}


def store_wavefronts(offsets: list[int]) -> int:
    """Wavefronts of one warp-wide 1- or 2-byte shared store: the most distinct 4-byte words in any of the 32
    banks."""
    banks: dict[int, set[int]] = {}
    for offset in offsets:
        word = offset // 4
        banks.setdefault(word % 32, set()).add(word)
    return max(len(words) for words in banks.values())


Order = Callable[
    [int, np.ndarray, np.random.Generator], np.ndarray
]  # (token r, its bits high first, rng) -> walk


def descending(r: int, bits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The kernel's walk: highest kept bit first (``bfind``)."""
    return bits


def tile_wavefronts(
    layout: Layout, head_dim: int, keep: int, trials: int, seed: int = 0, order: Order = descending
) -> float:
    """Mean scatter wavefronts per 32-token tile, each lane storing its kept values in ``order``."""
    rng = np.random.default_rng(seed)
    total = 0
    for _ in range(trials):
        for g, q in enumerate(word_quotas(head_dim, keep)):
            bits = [order(r, np.sort(rng.choice(32, q, replace=False))[::-1], rng) for r in range(32)]
            for step in range(q):
                total += store_wavefronts(
                    [layout(r, 32 * g + int(bits[r][step]), head_dim) for r in range(32)]
                )
    return total / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    print("| layout | s 0.7 | s 0.5 |\n|---|---|---|")
    for name, layout in LAYOUTS.items():
        cells = [
            tile_wavefronts(layout, args.head_dim, exact_keep(args.head_dim, s), args.trials)
            for s in (0.7, 0.5)
        ]
        print(f"| {name} | " + " | ".join(f"{x:.1f}" for x in cells) + " |")


if __name__ == "__main__":
    main()
