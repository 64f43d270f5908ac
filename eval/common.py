"""The contract between benchmarks and the generation runner.

A benchmark turns its data into fully tokenised `Sample`s (chat template, truncation and answer prefix already
applied), and scores the runner's decoded predictions. The runner knows nothing about any benchmark.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    task: str
    index: int
    input_ids: list[int]  # the exact prompt tokens given to the model (BOS / chat template included)
    max_new_tokens: int
    answers: list[str]
    stop_token_ids: list[int] = field(default_factory=list)  # stop ids besides the tokenizer's EOS
    min_new_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # benchmark-specific (all_classes, length, ...)


@dataclass
class Score:
    """One aggregated number for one task (a long-format result row without the run identity)."""

    task: str
    metric: str
    value: float
    n: int
    samples: list[float] = field(
        default_factory=list
    )  # per-sample scores on `value`'s scale, in sample order


class Benchmark(ABC):
    name: str

    @abstractmethod
    def tasks(self) -> list[str]:
        """The tasks this run evaluates, in table order."""

    @abstractmethod
    def samples(self, task: str) -> list[Sample]:
        """Build (or load) and tokenise the samples of one task."""

    @abstractmethod
    def score(self, task: str, predictions: list[dict[str, Any]]) -> list[Score]:
        """Score prediction records (see `prediction_record`) of one task."""

    def provenance(self) -> dict[str, Any]:
        """Facts that make a result reproducible: data hashes, reference commits, generator settings."""
        return {}


def check_records(
    task: str, records: list[dict[str, Any]], needed: tuple[str, ...] = ("pred", "answers")
) -> None:
    """Refuse prediction records a metric would score silently wrong: a string `answers` is iterated letter by
    letter (as if each letter were an answer), a null `pred` fails deep inside a metric."""
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"{task} prediction record {i} is {type(r).__name__}, not an object")
        missing = [k for k in needed if k not in r]
        if missing:
            raise ValueError(f"{task} prediction record {i} lacks {missing} (has {sorted(r)})")
        if not isinstance(r["pred"], str):
            raise ValueError(f"{task} prediction record {i}: pred={r['pred']!r} must be a string")
        answers = r["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(
                f"{task} prediction record {i}: answers={answers!r} must be a non-empty list of strings"
            )
        classes = r.get("all_classes")
        if classes is not None and not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        ):
            raise ValueError(
                f"{task} prediction record {i}: all_classes={classes!r} must be a list of strings"
            )
        if "length" in needed and (not isinstance(r["length"], int) or isinstance(r["length"], bool)):
            raise ValueError(f"{task} prediction record {i}: length={r['length']!r} must be an integer")


def prediction_record(sample: Sample, pred: str, n_new_tokens: int) -> dict[str, Any]:
    """What is kept per generated answer, so a run can be re-scored without regenerating."""
    return {
        "task": sample.task,
        "index": sample.index,
        "pred": pred,
        "answers": sample.answers,
        "prompt_tokens": len(sample.input_ids),
        "new_tokens": n_new_tokens,
        **sample.meta,
    }
