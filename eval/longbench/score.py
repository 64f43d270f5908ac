"""Re-score a finished LongBench run from its saved predictions, without regenerating.

Usage: python -m eval.longbench.score <job_dir> [--longbench-e]
Reads <job_dir>/predictions/<task>.jsonl (one `prediction_record` per line) and prints a per-task table and the
category means and averages (eval.averages), each with its 95% bootstrap CI and n.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from eval import averages, stats
from eval.common import Score
from eval.longbench.benchmark import score_records, summarize
from eval.longbench.data import ALL_TASKS
from eval.longbench.metrics import BUCKETS


def read_predictions(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc})") from exc
    return records


def score_predictions(job_dir: str | Path, longbench_e: bool = False) -> list[Score]:
    """Scores of every LongBench task file under <job_dir>/predictions, in table order.

    Files whose name is not a LongBench task are skipped with a warning.
    """
    pred_dir = Path(job_dir) / "predictions"
    if not pred_dir.is_dir():
        raise FileNotFoundError(
            f"no predictions folder {pred_dir} (expected <job_dir>/predictions/<task>.jsonl)"
        )
    files = {p.stem: p for p in sorted(pred_dir.glob("*.jsonl"))}
    for stem in sorted(set(files) - set(ALL_TASKS)):
        warnings.warn(f"skipping {files[stem]}: not a LongBench task name", stacklevel=2)
    tasks = [t for t in ALL_TASKS if t in files]
    if not tasks:
        raise FileNotFoundError(f"no LongBench prediction files (<task>.jsonl) in {pred_dir}")
    scores = []
    for t in tasks:
        try:
            scores += score_records(t, read_predictions(files[t]), longbench_e)
        except ValueError as err:
            raise ValueError(f"{files[t]}: {err}") from None
    return scores


def score_table(scores: list[Score]) -> pd.DataFrame:
    """One row per task: metric, score with its 95% bootstrap CI (eval.stats), n, and the LongBench-E buckets (in
    BUCKETS order; a task's empty bucket, which has no score, is NaN)."""
    rows: dict[str, dict[str, Any]] = {}
    for s in scores:
        metric, _, bucket = s.metric.partition("@")
        row = rows.setdefault(s.task, {"metric": metric})
        if bucket:
            row[bucket] = s.value
        else:
            low, high = stats.bootstrap_ci({s.task: s.samples})
            row |= {"score": s.value, "ci_low": low, "ci_high": high, "n": s.n}
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table[[c for c in table if c not in BUCKETS] + [b for b in BUCKETS if b in table]]


def summary_table(scores: list[Score]) -> pd.DataFrame:
    """Category means and averages (eval.averages: `avg` = the paper's English task mean, `avg_categories` = the
    leaderboard's mean of category means, `avg_zh`) with 95% CIs (resampling within each task) and n."""
    overall = {s.task: s for s in scores if "@" not in s.metric}
    values = summarize({t: s.value for t, s in overall.items()})  # the reported task scores, as the rows
    rows = {}
    for column, weights in averages.weights("longbench", overall).items():
        low, high = stats.bootstrap_ci({t: overall[t].samples for t in weights}, weights)
        n = min(overall[t].n for t in weights)
        rows[column] = {"score": values[column], "ci_low": low, "ci_high": high, "n": n}
    return pd.DataFrame.from_dict(rows, orient="index")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.longbench.score", description=__doc__.splitlines()[0]
    )
    parser.add_argument("job_dir", help="run folder holding predictions/<task>.jsonl")
    parser.add_argument(
        "--longbench-e", action="store_true", help="also score the LongBench-E length buckets"
    )
    args = parser.parse_args(argv)
    try:
        scores = score_predictions(args.job_dir, args.longbench_e)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(score_table(scores).to_string(float_format=lambda v: f"{v:.2f}"))
        print()
        print(summary_table(scores).to_string(float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
