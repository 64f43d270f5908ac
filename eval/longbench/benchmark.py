"""LongBench v1 as a `Benchmark`: official prompt path in, published-comparable scores out."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from eval import averages
from eval.common import Benchmark, Sample, Score, check_records
from eval.longbench import data, metrics
from eval.longbench.prompts import (
    MAXLEN,
    NEWLINE_STOP_TASKS,
    PROMPTS,
    SKIP_CHAT_TASKS,
    encode_prompt,
    format_prompt,
    newline_token_id,
    truncate_middle,
)

REFERENCE_COMMIT = "2e00731"
METRIC_PACKAGES = ("rouge", "rouge-score", "jieba", "fuzzywuzzy")


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def score_records(task: str, records: list[dict[str, Any]], longbench_e: bool = False) -> list[Score]:
    """Scores of one task's prediction records (see `eval.common.prediction_record`).

    One overall Score named after the metric; with `longbench_e`, one more per length bucket that holds a sample
    ("<metric>@0-4k", "@4-8k", "@8k+"; an empty bucket has none).
    """
    if task not in metrics.TASK_METRIC:
        raise ValueError(f"unknown LongBench task {task!r}; allowed: {list(data.ALL_TASKS)}")
    if not records:
        raise ValueError(f"no prediction records to score for LongBench task {task!r}")
    check_records(task, records, ("pred", "answers", "length") if longbench_e else ("pred", "answers"))
    per_sample = [metrics.sample_score(task, r["pred"], r["answers"], r.get("all_classes")) for r in records]
    name = metrics.metric_name(task)
    scores = [Score(task, name, metrics.task_score(per_sample), len(records), [100 * x for x in per_sample])]
    if longbench_e:
        buckets = metrics.split_buckets(per_sample, [r["length"] for r in records])
        for bucket, xs in buckets.items():
            value = metrics.bucket_score(xs)
            scores.append(Score(task, f"{name}@{bucket}", value, len(xs), [100 * x for x in xs]))
    return scores


def summarize(task_scores: dict[str, float]) -> dict[str, float]:
    """English category means, "avg" (the paper's mean of the English task scores), "avg_categories" (the
    leaderboard's mean of category means) and "avg_zh" when Chinese tasks ran: see eval.averages."""
    return averages.summarize("longbench", task_scores)


class LongBenchBenchmark(Benchmark):
    """LongBench v1 (or LongBench-E) with the official pred.py prompt path and eval.py metrics."""

    name = "longbench"

    def __init__(
        self,
        tokenizer: Any,
        tasks: list[str] | None = None,
        data_dir: str | None = None,
        n: int | None = None,
        longbench_e: bool = False,
        max_length: int = 7500,
        chat_template: bool = True,
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length (prompt token budget) must be >= 2, got {max_length}")
        if n is not None and n < 1:
            raise ValueError(f"n must be a positive number of samples per task, got {n}")
        self.tokenizer = tokenizer
        self._tasks = data.resolve_tasks(tasks, longbench_e)
        self.data_dir = data_dir
        self.n = n
        self.longbench_e = longbench_e
        self.max_length = max_length
        self.chat_template = chat_template
        self._resolved_dir: Path | None = None

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def _dir(self) -> Path:
        """Resolved lazily so that scoring never touches the data (or the network)."""
        if self._resolved_dir is None:
            self._resolved_dir = data.resolve_data_dir(self.data_dir)
        return self._resolved_dir

    def samples(self, task: str) -> list[Sample]:
        if task not in self._tasks:
            raise ValueError(f"task {task!r} is not in this run's LongBench tasks {self._tasks}")
        records = data.load_task(self._dir(), task, self.longbench_e, self.n)
        stop = [newline_token_id(self.tokenizer)] if task in NEWLINE_STOP_TASKS else []
        samples = []
        for index, record in enumerate(records):
            prompt = truncate_middle(format_prompt(task, record), self.tokenizer, self.max_length)
            samples.append(
                Sample(
                    task=task,
                    index=index,
                    input_ids=encode_prompt(task, prompt, self.tokenizer, self.chat_template),
                    max_new_tokens=MAXLEN[task],
                    answers=list(record["answers"]),
                    stop_token_ids=list(stop),
                    min_new_tokens=1 if task in NEWLINE_STOP_TASKS else 0,
                    meta={
                        "all_classes": record["all_classes"],
                        "length": record["length"],
                        "_id": record["_id"],
                    },
                )
            )
        return samples

    def score(self, task: str, predictions: list[dict[str, Any]]) -> list[Score]:
        return score_records(task, predictions, self.longbench_e)

    def provenance(self) -> dict[str, Any]:
        data_dir = self._dir()
        files = {t: data.task_file(data_dir, t, self.longbench_e) for t in self._tasks}
        return {
            "benchmark": "LongBench-E" if self.longbench_e else "LongBench v1",
            "reference": f"THUDM/LongBench@{REFERENCE_COMMIT}",
            "data_source": str(self.data_dir)
            if self.data_dir
            else f"hf:{data.HF_REPO_ID}/{data.HF_FILENAME}",
            "data_dir": str(data_dir),
            "data_sha256": {t: data.file_sha256(p) for t, p in files.items()},
            "tasks": list(self._tasks),
            "n_per_task": self.n,
            "prompts_sha256": hashlib.sha256(
                json.dumps(PROMPTS, sort_keys=True, ensure_ascii=False).encode()
            ).hexdigest(),
            "packages": {p: _package_version(p) for p in METRIC_PACKAGES},
            "fuzz_ratio": "difflib.SequenceMatcher (fuzzywuzzy pure-python path; python-Levenshtein never used)",
            "truncation": {"mode": "middle", "unit": "tokens", "max_length": self.max_length},
            "chat_template": {
                "enabled": self.chat_template,
                "tokenizer_has_template": bool(getattr(self.tokenizer, "chat_template", None)),
                "skipped_for": sorted(SKIP_CHAT_TASKS),
                "policy": "apply_chat_template(user turn = whole prompt, add_generation_prompt=True)",
            },
            "generation": {
                "max_new_tokens": {t: MAXLEN[t] for t in self._tasks},
                "newline_stop": sorted(NEWLINE_STOP_TASKS),
            },
        }
