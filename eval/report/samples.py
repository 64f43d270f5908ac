"""Per-sample scores of a finished job re-scored from its predictions, for jobs written before result rows stored
them (result.json schema < 2): what the CIs and paired tests need (eval.stats)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eval.results import read_jsonl


def _score(benchmark: str, task: str, record: dict) -> float:
    if benchmark == "ruler":
        from eval.ruler.metrics import metric_name, postprocess
        from eval.ruler.metrics import sample_scores as ruler_sample_scores

        (score,) = ruler_sample_scores(metric_name(task), [postprocess(record["pred"])], [record["answers"]])
        return score  # unrounded, as the result rows store it
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
