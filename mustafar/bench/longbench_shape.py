"""A LongBench-shaped generation job for throughput benchmarks, and the job-time model built on measured points.

The 16 English tasks with their sample counts and average lengths from the LongBench paper (Bai et al., 2023,
Table 1: "Avg len", counted in words for English and code). Prompt lengths in tokens are drawn per sample from a
log-normal whose mean is the task's average length times a tokens-per-word factor (the paper gives only means,
so the spread `sigma` is an assumption), truncated at the 7,500-token budget the harness uses for Llama-3-8B.
Generation budgets are each task's `max_new_tokens` (the harness's `eval/longbench/maxlen.json`).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

# task -> (samples, average length in words) from the LongBench paper's Table 1
EN_TASKS: dict[str, tuple[int, int]] = {
    "narrativeqa": (200, 18409),
    "qasper": (200, 3619),
    "multifieldqa_en": (150, 4559),
    "hotpotqa": (200, 9151),
    "2wikimqa": (200, 4887),
    "musique": (200, 11214),
    "gov_report": (200, 8734),
    "qmsum": (200, 10614),
    "multi_news": (200, 2113),
    "trec": (200, 5177),
    "triviaqa": (200, 8209),
    "samsum": (200, 6258),
    "passage_count": (200, 11141),
    "passage_retrieval_en": (200, 9289),
    "lcc": (500, 1235),
    "repobench-p": (500, 4206),
}
CODE_TASKS = ("lcc", "repobench-p")
MAX_PROMPT = 7500  # the harness's middle-truncation budget for Llama-3-8B
MIN_PROMPT = 64


@dataclass(frozen=True)
class LengthModel:
    """Words -> tokens and the log-normal spread (assumptions, recorded with every result)."""

    tokens_per_word: float = 1.3  # English prose under Llama-3's tokenizer
    tokens_per_code_word: float = 2.0  # whitespace-split code "words" hold several tokens
    sigma: float = 0.5
    max_prompt: int = MAX_PROMPT


def prompt_lengths(task: str, n: int, seed: int, model: LengthModel = LengthModel()) -> list[int]:
    """`n` seeded prompt lengths (tokens) of `task`, clipped to [MIN_PROMPT, model.max_prompt]."""
    if task not in EN_TASKS:
        raise ValueError(f"unknown LongBench English task {task!r}; allowed: {', '.join(EN_TASKS)}")
    per_word = model.tokens_per_code_word if task in CODE_TASKS else model.tokens_per_word
    mean = EN_TASKS[task][1] * per_word
    mu = math.log(mean) - model.sigma**2 / 2  # log-normal with this mean
    rng = random.Random(f"{seed}:{task}")
    return [
        min(model.max_prompt, max(MIN_PROMPT, round(rng.lognormvariate(mu, model.sigma)))) for _ in range(n)
    ]


def interpolate(points: dict[int, float], x: float) -> float:
    """Piecewise-linear through measured (length -> value) points, extended linearly past both ends."""
    xs = sorted(points)
    if len(xs) == 1:
        return points[xs[0]]
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1 = xs[i - 1], xs[i]
    return points[x0] + (points[x1] - points[x0]) * (x - x0) / (x1 - x0)


@dataclass
class PathCost:
    """Measured costs of one generation path at one batch size, by prompt length (tokens)."""

    batch: int
    prefill_s: dict[int, float]  # prefill of `batch` prompts of this length
    step_ms: dict[int, float]  # one decode step (all rows) at this context
    setup_ms: float = 0.0  # per batch, beyond its steps (graph warm-up and capture)

    def batch_seconds(self, prompt: int, new_tokens: int) -> float:
        """One batch: prefill, then `new_tokens` steps at the context they meet on average."""
        step = interpolate(self.step_ms, prompt + new_tokens / 2)
        return interpolate(self.prefill_s, prompt) + (self.setup_ms + new_tokens * step) / 1000


def job_seconds(cost: PathCost, lengths: dict[str, list[int]], max_new: dict[str, int]) -> dict[str, float]:
    """Seconds per task: samples sorted by length and cut into batches of `cost.batch`, each batch padded to its
    longest prompt (a partial last batch costs a full one: both upper bounds of a padded batched run)."""
    out = {}
    for task, lens in lengths.items():
        ordered = sorted(lens, reverse=True)
        chunks = [ordered[i : i + cost.batch] for i in range(0, len(ordered), cost.batch)]
        out[task] = sum(cost.batch_seconds(chunk[0], max_new[task]) for chunk in chunks)
    return out
