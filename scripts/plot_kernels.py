"""Plot a kernel benchmark (scripts/bench_kernels.py's bench.json): the default launch's graph-replayed speed-up
over dense SDPA at every measured size, one line per keep rule and sparsity, with the byte-ratio ideal dashed.

Usage: python scripts/plot_kernels.py results/kernels/scatter_h200/run4/bench.json   # -> speedup.png beside it
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(bench: Path) -> Path:
    data = json.loads(bench.read_text())
    rows = [r for r in data["decode"] if r.get("config", "default") == "default"]
    sizes = sorted({(r["batch"], r["tokens"]) for r in rows})
    labels = [f"B{b}\n{t // 1024}K" for b, t in sizes]
    fig, ax = plt.subplots(figsize=(7, 4))
    for rule, s in sorted({(r.get("keep_rule", "exact"), r["sparsity"]) for r in rows}):
        mine = {
            (r["batch"], r["tokens"]): r
            for r in rows
            if r.get("keep_rule", "exact") == rule and r["sparsity"] == s
        }
        x = [i for i, size in enumerate(sizes) if size in mine]
        line = ax.plot(x, [mine[sizes[i]]["speedup_graph"] for i in x], marker="o", label=f"{rule} s={s}")[0]
        ax.plot(x, [mine[sizes[i]]["byte_ideal"] for i in x], ls="--", lw=0.8, color=line.get_color())
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(sizes)), labels)
    ax.set_ylabel("× dense SDPA (graph-replayed)")
    ax.set_title(
        f"sparse decode, default launch, {data['meta']['device']} (dashed: byte-ratio ideal)", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = bench.with_name("speedup.png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bench", type=Path, help="a bench.json written by scripts/bench_kernels.py")
    args = parser.parse_args()
    if not args.bench.is_file():
        parser.error(f"no benchmark file at {args.bench}")
    print(plot(args.bench))
