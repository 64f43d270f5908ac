"""Bar chart of the nm_quota jobs: RULER average by keep rule at K+V 0.5 and 0.75, with 95% CIs.
python results/paper/nm_quota/plot_groups.py [--out PNG]  -> results/paper/nm_quota/accuracy_by_group.png"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RULES = [  # (x label, policy suffix); at s 0.5 a group of M keeps M/2, at s 0.75 M/4
    ("exact\n(no groups)", ""),
    ("word\n(32-channel words)", " word"),
    ("groups of 8\nstrided", " nm8s"),
    ("groups of 4\nstrided", " nm4s"),
    ("groups of 8\nconsecutive", " nm8"),
    ("groups of 4\nconsecutive", " nm4"),
    ("K word,\nV groups of 4", " k-word v-nm4"),  # per-side keep rules
    ("K groups of 8 strided,\nV groups of 4", " k-nm8s v-nm4"),
]


def averages() -> dict[str, tuple[float, float, float]]:
    """{policy: (RULER average, CI low, CI high)} of the sweep's 20-per-task jobs (the 60-per-task follow-ups are
    in the README's table)."""
    rows = {}
    for f in sorted((HERE / "jobs").glob("*.json")):
        avg = next(r for r in json.loads(f.read_text())["rows"] if r["task"] == "avg")
        if avg["n"] == 20:
            rows[avg["policy"]] = (avg["value"], avg["ci_low"], avg["ci_high"])
    return rows


def plot(rows: dict[str, tuple[float, float, float]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(10.5, 3.9))
    width = 0.38
    for i, (sparsity, color) in enumerate([("K0.5 V0.5", "tab:blue"), ("K0.75 V0.75", "tab:orange")]):
        xs, ys, errs = [], [], [[], []]
        for j, (_, suffix) in enumerate(RULES):
            if sparsity + suffix not in rows:
                ax.text(
                    j + (i - 0.5) * width, 1, "not run", rotation=90, ha="center", va="bottom", fontsize=7
                )
                continue
            v, lo, hi = rows[sparsity + suffix]
            xs.append(j + (i - 0.5) * width)
            ys.append(v)
            errs[0].append(v - lo)
            errs[1].append(hi - v)
        ax.bar(xs, ys, width, yerr=errs, capsize=3, color=color, label=sparsity)
    ax.axhline(rows["dense"][0], color="gray", linestyle="--", linewidth=1, label="dense")
    ax.set_xticks(range(len(RULES)), [name for name, _ in RULES])
    ax.set_ylabel("RULER 1K average (%)")
    ax.set_title("Per-token magnitude pruning by keep rule (SmolLM2-135M, 60 prompts per bar)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=HERE / "accuracy_by_group.png", help="PNG to write (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    plot(averages(), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
