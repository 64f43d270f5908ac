"""Is policy A better than policy B beyond sampling noise? A paired comparison on the same samples.

    python -m eval.report.compare results/key_pruning "K0.7" "ThinK-K0.7" ["K0.7[oa]" "K0.7" ...]

Pairs of policy labels (as in the tables); prints mean-of-task-means of A - B and its paired standard error.
Both jobs saw the same prompts (same benchmark seed), so per-sample differences cancel the prompt difficulty.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.report.samples import paired_difference, sample_scores
from eval.results import load_rows


def job_dirs(sweep_dir: Path) -> dict[str, tuple[Path, str]]:
    """{policy label: (job folder, benchmark)} of a sweep (one model and benchmark expected)."""
    rows = load_rows(sweep_dir).drop_duplicates("run_id")
    if rows["model"].nunique() > 1 or rows["benchmark"].nunique() > 1:
        raise ValueError(f"{sweep_dir} mixes models or benchmarks; compare within one")
    return {r["policy"]: (Path(sweep_dir) / r["run_id"], r["benchmark"]) for _, r in rows.iterrows()}


def compare(sweep_dir: Path, a: str, b: str) -> tuple[float, float]:
    """(A - B, paired SE) in score points."""
    jobs = job_dirs(sweep_dir)
    missing = [p for p in (a, b) if p not in jobs]
    if missing:
        raise ValueError(f"no job with policy {missing} in {sweep_dir}; have {sorted(jobs)}")
    return paired_difference(sample_scores(*jobs[a]), sample_scores(*jobs[b]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("policies", nargs="+", help="pairs: A1 B1 [A2 B2 ...]")
    args = parser.parse_args(argv)
    if len(args.policies) % 2:
        parser.error("give policies in pairs (A B)")
    for a, b in zip(args.policies[::2], args.policies[1::2]):
        diff, se = compare(args.sweep_dir, a, b)
        print(f"{a} - {b}: {diff:+.2f} ± {se:.2f} (paired SE)")


if __name__ == "__main__":
    main()
