"""Per-sample scores of a finished job, re-scored from its predictions: what the noise estimates need.

A task score is the mean of per-sample scores (x100), so the standard error of a job's Average and the paired
differences between two policies on the same samples follow from these.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from eval.results import read_jsonl


def _score(benchmark: str, task: str, record: dict) -> float:
    if benchmark == "ruler":
        from eval.ruler.metrics import METRICS, metric_name, postprocess

        return METRICS[metric_name(task)]([postprocess(record["pred"])], [record["answers"]])
    if benchmark == "longbench":
        from eval.longbench.metrics import sample_score

        return 100 * sample_score(task, record["pred"], record["answers"], record.get("all_classes"))
    raise ValueError(f"no per-sample scorer for benchmark {benchmark!r}")


def sample_scores(job_dir: Path, benchmark: str) -> pd.DataFrame:
    """Columns task, index, score (0-100) for every prediction the job wrote."""
    out = [
        {"task": path.stem, "index": r["index"], "score": _score(benchmark, path.stem, r)}
        for path in sorted((job_dir / "predictions").glob("*.jsonl"))
        for r in read_jsonl(path)
    ]
    return pd.DataFrame(out, columns=["task", "index", "score"])


def average_se(scores: pd.DataFrame) -> float:
    """Standard error of the mean-of-task-means, samples independent: sqrt(sum_t var_t / n_t) / T.

    NaN when a task has fewer than 2 samples (no variance estimate)."""
    per_task = scores.groupby("task")["score"]
    var = per_task.var(ddof=1) / per_task.count()
    return math.sqrt(var.sum(skipna=False)) / len(var) if len(var) else math.nan


def paired_difference(a: pd.DataFrame, b: pd.DataFrame) -> tuple[float, float]:
    """Mean-of-task-means of (a - b) on the same samples and its standard error (a paired comparison)."""
    joined = a.merge(b, on=["task", "index"], suffixes=("_a", "_b"))
    joined["score"] = joined["score_a"] - joined["score_b"]
    diff = joined.groupby("task")["score"].mean().mean()
    return float(diff), average_se(joined[["task", "index", "score"]])
