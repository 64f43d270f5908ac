"""LongBench v1 metrics and aggregation with the exact semantics of the reference `metrics.py` / `eval.py`.

Quirks are kept on purpose (docs/evaluation.md §1.5): ASCII-only punctuation removal, rouge 1.0.1's set-based ROUGE-L with
"." sentence splitting, the classification list-mutation skip, and fuzzywuzzy's difflib-based ratio.
"""

from __future__ import annotations

import difflib
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np
from rouge import Rouge

# ---------------------------------------------------------------------------------------------------------------
# Normalisation and token F1


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, replace articles by a space, collapse whitespace (in that order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _ASCII_PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


_ASCII_PUNCT = frozenset(string.punctuation)
# Verbatim from the reference; note that "》" is in the set but "《" is not.
_ZH_PUNCT = frozenset(
    string.punctuation
    + "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)


def normalize_zh_answer(s: str) -> str:
    """Lowercase, drop ASCII + Chinese punctuation, remove all whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _ZH_PUNCT)
    return "".join(s.split())


def f1_score(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    """Multiset token F1; 0 when nothing is shared (including both empty)."""
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    precision = same / len(prediction)
    recall = same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str) -> float:
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _jieba_cut(s: str) -> list[str]:
    import jieba  # imported lazily: only the Chinese tasks need it, and its dictionary loads on first use

    return list(jieba.cut(s, cut_all=False))


def qa_f1_zh_score(prediction: str, ground_truth: str) -> float:
    pred = [t for t in map(normalize_zh_answer, _jieba_cut(prediction)) if t]
    gold = [t for t in map(normalize_zh_answer, _jieba_cut(ground_truth)) if t]
    return f1_score(pred, gold)


# ---------------------------------------------------------------------------------------------------------------
# ROUGE


@cache
def _rouge() -> Rouge:
    return Rouge()


def rouge_score(prediction: str, ground_truth: str) -> float:
    """ROUGE-L F of `rouge==1.0.1` (set semantics, "." sentence split, case-sensitive, 1e-8 epsilon).

    Like the reference, all default metrics (rouge-1/2/l) are computed and any exception (empty or dots-only
    hypothesis, RecursionError on very long sentences) scores 0.0.
    """
    try:
        scores = _rouge().get_scores([prediction], [ground_truth], avg=True)
    except Exception:
        return 0.0
    return scores["rouge-l"]["f"]


def rouge_zh_score(prediction: str, ground_truth: str) -> float:
    """`rouge_score` on jieba-segmented text joined with single spaces."""
    return rouge_score(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(ground_truth)))


def rouge_score_google(prediction: str, ground_truth: str, use_stemmer: bool = False) -> float:
    """ALTERNATIVE, not LongBench's metric: Google `rouge-score` rougeL F1 (tokenised, lowercased, multiset LCS).

    Provided for comparison with papers that report it; published LongBench numbers use `rouge_score`.
    """
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=use_stemmer).score(ground_truth, prediction)["rougeL"].fmeasure


# ---------------------------------------------------------------------------------------------------------------
# Classification, retrieval, counting, code


def classification_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None) -> float:
    """1/|M| if the gold class is among the classes matched (case-sensitive substring) in the prediction.

    Classes that are proper substrings of the gold label are removed from M while iterating over M, exactly as
    the reference does: the element following each removed one is skipped and never checked.
    """
    if all_classes is None:
        raise ValueError("classification_score needs all_classes (the task's label set), got None")
    matches = [c for c in all_classes if c in prediction]
    for term in matches:  # deliberate mutation during iteration (reference quirk)
        if term in ground_truth and term != ground_truth:
            matches.remove(term)
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _digit_share(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(1 for x in numbers if x == target) / len(numbers)


def _retrieval(prediction: str, ground_truth: str, pattern: str) -> float:
    found = re.findall(pattern, ground_truth)
    if not found:
        raise ValueError(f"retrieval gold answer {ground_truth!r} has no paragraph id matching {pattern!r}")
    return _digit_share(prediction, found[0])


def retrieval_score(prediction: str, ground_truth: str) -> float:
    """Share of the digit runs in the prediction equal to the gold `Paragraph N` id."""
    return _retrieval(prediction, ground_truth, r"Paragraph (\d+)")


def retrieval_zh_score(prediction: str, ground_truth: str) -> float:
    return _retrieval(prediction, ground_truth, r"段落(\d+)")


def count_score(prediction: str, ground_truth: str) -> float:
    """Share of the digit runs in the prediction equal to the gold count."""
    return _digit_share(prediction, str(ground_truth))


def fuzz_ratio(s1: str | None, s2: str | None) -> int:
    """fuzzywuzzy 0.18.0 `fuzz.ratio` on its pure-python (difflib) path, whatever else is installed.

    fuzzywuzzy silently switches to python-Levenshtein when importable, which scores some pairs differently;
    LongBench's numbers come from the difflib path (autojunk on, round-half-even).
    """
    if s1 is None or s2 is None:
        return 0
    if s1 == s2:
        return 100
    if not s1 or not s2:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, s1, s2).ratio()))


def code_sim_score(prediction: str, ground_truth: str) -> float:
    """fuzz.ratio/100 of the first prediction line without ` # or // (indentation kept) against the gold."""
    line = next(
        (
            ln
            for ln in prediction.lstrip("\n").split("\n")
            if "`" not in ln and "#" not in ln and "//" not in ln
        ),
        "",
    )
    return fuzz_ratio(line, ground_truth) / 100


# ---------------------------------------------------------------------------------------------------------------
# Per-task scoring

Metric = Callable[..., float]
TASK_METRIC: dict[str, Metric] = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_count": count_score,
    "passage_retrieval_en": retrieval_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}
FIRST_LINE_TASKS: frozenset[str] = frozenset({"trec", "triviaqa", "samsum", "lsht"})
BUCKETS: tuple[str, ...] = ("0-4k", "4-8k", "8k+")


def metric_name(task: str) -> str:
    return TASK_METRIC[task].__name__


def sample_score(
    task: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None = None
) -> float:
    """max(0, max over answers), after the first-line rule for the four few-shot tasks (no strip)."""
    if task in FIRST_LINE_TASKS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = TASK_METRIC[task]
    extra: dict[str, Any] = {"all_classes": all_classes} if metric is classification_score else {}
    return max([0.0, *(metric(prediction, gold, **extra) for gold in answers)])


def task_score(sample_scores: Sequence[float]) -> float:
    """round(100 * sum / count, 2), the reference `scorer`'s sum in sample order (never an empty list)."""
    return round(100 * sum(sample_scores) / len(sample_scores), 2)


def length_bucket(length: int) -> str:
    """LongBench-E bucket of a record's `length` field (words, or characters for Chinese)."""
    if length < 4000:
        return "0-4k"
    if length < 8000:
        return "4-8k"
    return "8k+"


def split_buckets(sample_scores: Sequence[float], lengths: Sequence[int]) -> dict[str, list[float]]:
    """{bucket: its samples' scores, in sample order} of the buckets holding a sample, in BUCKETS order: an empty
    bucket has no score (the reference's NaN would make the job's result unreadable)."""
    per_bucket: dict[str, list[float]] = {b: [] for b in BUCKETS}
    for score, length in zip(sample_scores, lengths, strict=True):
        per_bucket[length_bucket(length)].append(score)
    return {b: scores for b, scores in per_bucket.items() if scores}


def bucket_score(sample_scores: Sequence[float]) -> float:
    """The reference `scorer_e`'s round(100 * np.mean(x), 2): numpy's pairwise sum and its rounding of the
    float64 differ from `task_score` in the last digit for some lists."""
    return float(round(100 * np.mean(sample_scores), 2))


def bucket_scores(sample_scores: Sequence[float], lengths: Sequence[int]) -> dict[str, float]:
    """{bucket: score} of the non-empty LongBench-E buckets (`split_buckets`, `bucket_score`)."""
    return {b: bucket_score(v) for b, v in split_buckets(sample_scores, lengths).items()}


# ---------------------------------------------------------------------------------------------------------------
# Leaderboard aggregation

CATEGORIES: tuple[str, ...] = (
    "Single-Doc QA",
    "Multi-Doc QA",
    "Summarization",
    "Few-shot",
    "Synthetic",
    "Code",
)
EN_CATEGORY_TASKS: dict[str, tuple[str, ...]] = {
    "Single-Doc QA": ("narrativeqa", "qasper", "multifieldqa_en"),
    "Multi-Doc QA": ("hotpotqa", "2wikimqa", "musique"),
    "Summarization": ("gov_report", "qmsum", "multi_news"),
    "Few-shot": ("trec", "triviaqa", "samsum"),
    "Synthetic": ("passage_count", "passage_retrieval_en"),
    "Code": ("lcc", "repobench-p"),
}
ZH_CATEGORY_TASKS: dict[str, tuple[str, ...]] = {
    "Single-Doc QA": ("multifieldqa_zh",),
    "Multi-Doc QA": ("dureader",),
    "Summarization": ("vcsum",),
    "Few-shot": ("lsht",),
    "Synthetic": ("passage_retrieval_zh",),
    "Code": ("lcc", "repobench-p"),
}


def category_means(
    task_scores: dict[str, float], categories: dict[str, tuple[str, ...]] = EN_CATEGORY_TASKS
) -> dict[str, float]:
    """Unrounded mean of each category's present tasks; categories with no task present are left out."""
    means = {}
    for category, tasks in categories.items():
        present = [task_scores[t] for t in tasks if t in task_scores]
        if present:
            means[category] = sum(present) / len(present)
    return means


def leaderboard_average(
    task_scores: dict[str, float], categories: dict[str, tuple[str, ...]] = EN_CATEGORY_TASKS
) -> float:
    """Mean of the category means (the leaderboard "Avg" when every task of the table is present)."""
    means = category_means(task_scores, categories)
    if not means:
        return math.nan
    return sum(means.values()) / len(means)
