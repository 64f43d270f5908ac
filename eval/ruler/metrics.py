"""RULER post-processing and metrics (`scripts/eval/`, docs/evaluation.md §2.7): case-insensitive substring matching."""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(pred: str) -> str:
    """strip, every control character (newline included) to a newline, strip again; nothing else."""
    return _CONTROL.sub("\n", pred.strip()).strip()


def _check(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} reference lists")
    if not preds:
        raise ValueError("no predictions to score")
    if any(len(r) == 0 for r in refs):
        raise ValueError("every sample needs at least one reference answer")


def _match_all(pred: str, refs: Sequence[str]) -> float:
    return sum(r.lower() in pred.lower() for r in refs) / len(refs)


def _match_part(pred: str, refs: Sequence[str]) -> float:
    return max(float(r.lower() in pred.lower()) for r in refs)


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over samples of the fraction of references contained in the prediction, x100, rounded to 2 (in
    RULER's order, mean then x100, so ties round as its scores do)."""
    _check(preds, refs)
    return round(sum(_match_all(p, rs) for p, rs in zip(preds, refs)) / len(preds) * 100, 2)


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over samples of whether any reference is contained in the prediction, x100, rounded to 2."""
    _check(preds, refs)
    return round(sum(_match_part(p, rs) for p, rs in zip(preds, refs)) / len(preds) * 100, 2)


def sample_scores(metric: str, preds: Sequence[str], refs: Sequence[Sequence[str]]) -> list[float]:
    """Each sample's score x100, unrounded (1/3 of the references is 33.33…): what the task score (rounded once,
    at the end), CIs and paired tests are computed from."""
    _check(preds, refs)
    one = {"string_match_all": _match_all, "string_match_part": _match_part}[metric]
    return [100 * one(p, rs) for p, rs in zip(preds, refs)]


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def metric_name(task: str) -> str:
    """qa_1 and qa_2 use string_match_part; every other task string_match_all."""
    return "string_match_part" if task.startswith("qa_") else "string_match_all"
