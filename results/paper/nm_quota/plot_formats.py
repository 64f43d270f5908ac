"""The s 0.5 formats against dense on the same 180 prompts (60 per task): paired difference of the RULER average with
its paired-bootstrap 95% CI (eval.stats.paired_test, as scripts/paired_compare.py prints it), and each format's
KV bytes relative to dense at head_dim 64.
python results/paper/nm_quota/plot_formats.py [--out PNG]  -> results/paper/nm_quota/formats_vs_dense.png"""

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from eval.stats import paired_test  # noqa: E402

HERE = Path(__file__).resolve().parent
FORMATS = [  # (label, policy, bytes / dense at D 64)
    ("K exact + V exact", "K0.5 V0.5", 0.5625),
    ("K word + V 2:4", "K0.5 V0.5 k-word v-nm4", 0.5625),
    ("K word + V 2:4, fp8", "K0.5 V0.5 k-word v-nm4 fp8", 0.344),
    ("K 4:8 strided + V 2:4", "K0.5 V0.5 k-nm8s v-nm4", 0.5625),
    ("K 4:8 strided + V 2:4, fp8", "K0.5 V0.5 k-nm8s v-nm4 fp8", 0.344),
    ("K 4:8 calibrated + V 2:4", "K0.5 V0.5 k-nm8c v-nm4", 0.5625),
    ("K 4:8 calibrated + V 2:4, fp8", "K0.5 V0.5 k-nm8c v-nm4 fp8", 0.344),
]


def samples(policy: str) -> dict[str, list[float]]:
    """Per-task per-sample scores of the 60-per-task job of `policy`."""
    for f in sorted((HERE / "jobs").glob("*.json")):
        rows = [r for r in json.loads(f.read_text())["rows"] if r.get("kind") == "task"]
        if rows and rows[0]["policy"] == policy and rows[0]["n"] == 60:
            return {r["task"]: r["samples"] for r in rows}
    raise SystemExit(f"no 60-per-task job of {policy!r} under {HERE / 'jobs'}")


def plot(out: Path) -> None:
    dense = samples("dense")
    fig, ax = plt.subplots(figsize=(8.5, 3.9))
    for i, (_, policy, size) in enumerate(FORMATS):
        p = paired_test(samples(policy), dense)
        color = "tab:red" if p.high < 0 else "tab:blue"
        ax.errorbar(p.diff, i, xerr=[[p.diff - p.low], [p.high - p.diff]], fmt="o", color=color, capsize=4)
        ax.text(4.6, i, f"{size:g} of dense bytes", va="center", fontsize=8)
    ax.axvline(0, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(FORMATS)), [label for label, _, _ in FORMATS])
    ax.invert_yaxis()
    ax.set_xlim(-9, 8.5)
    ax.set_xlabel("RULER 1K average − dense, paired (points, 95% CI; red: below dense)")
    ax.set_title("s 0.5 formats on SmolLM2-135M, 180 prompts each, paired against dense", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=HERE / "formats_vs_dense.png", help="PNG to write (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    plot(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
