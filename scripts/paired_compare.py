"""Paired comparison of two finished jobs on the same prompts: A − B of the task-mean average, its paired-bootstrap
95% CI and the sign-flip p-value (eval.stats.paired_test), from each job's result.json.

Usage: python scripts/paired_compare.py A/result.json B/result.json [C/result.json D/result.json ...]
(pairs: A vs B, C vs D, ...). The experiments' READMEs quote its output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.stats import paired_test  # noqa: E402


def task_samples(path: Path) -> tuple[str, str | None, dict[str, list[float]]]:
    """(policy label, samples_id, {task: per-sample scores}) of one result.json; LongBench-E's length-bucket rows
    (metric ``<name>@<bucket>``) are parts of a task, not tasks."""
    rows = [
        r
        for r in json.loads(path.read_text())["rows"]
        if r.get("kind") == "task" and "@" not in str(r.get("metric", ""))
    ]
    if not rows:
        raise SystemExit(f"{path}: no task rows (is it a finished job's result.json?)")
    return rows[0]["policy"], rows[0].get("samples_id"), {r["task"]: r["samples"] for r in rows}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or len(argv) % 2:
        raise SystemExit(__doc__)
    for a, b in zip(argv[::2], argv[1::2]):
        (la, ia, sa), (lb, ib, sb) = task_samples(Path(a)), task_samples(Path(b))
        if ia != ib:
            raise SystemExit(
                f"error: {a} and {b} were not asked the same prompts (samples_id {ia} vs {ib}): no paired test"
            )
        p = paired_test(sa, sb)
        print(f"{la} − {lb}: {p.diff:+.2f} [{p.low:+.2f}, {p.high:+.2f}], p = {p.p_value:.3f}, n = {p.n}")


if __name__ == "__main__":
    main(sys.argv[1:])
