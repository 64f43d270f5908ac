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
