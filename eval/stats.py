"""Sampling noise of benchmark scores: percentile-bootstrap confidence intervals and paired comparisons.

Every score in a table is a weighted sum of task means (a task score: weight 1 on that task; an average: one weight
per task), so one pair of functions covers task cells and averages alike. Samples are resampled *within* each task
(the tasks are fixed, the samples are what is drawn), with a fixed seed so a table is reproducible.

Paired comparison of two policies on the same samples: the CI of the difference comes from a paired bootstrap (the
same resampled sample indices for both policies), the p-value from a sign-flip permutation test on the per-sample
differences (under "no difference" each difference is as likely to have either sign). A difference is "within
noise" unless both say otherwise (`Paired.within_noise`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95

Samples = Mapping[str, Sequence[float]]  # {task: per-sample scores, in sample order}


def _arrays(samples: Samples, weights: Mapping[str, float] | None) -> tuple[list[np.ndarray], np.ndarray]:
    weights = dict(weights) if weights is not None else {t: 1.0 / len(samples) for t in samples}
    missing = [t for t in weights if t not in samples]
    if missing:
        raise ValueError(f"no per-sample scores for task(s) {missing}; have {sorted(samples)}")
    arrays = [np.asarray(samples[t], dtype=float) for t in weights]
    empty = [t for t, a in zip(weights, arrays) if a.size == 0]
    if empty:
        raise ValueError(f"task(s) {empty} have no samples")
    return arrays, np.array(list(weights.values()), dtype=float)


def weighted_mean(samples: Samples, weights: Mapping[str, float] | None = None) -> float:
    """sum_t w_t * mean(samples_t); equal weights 1/T when `weights` is None."""
    arrays, w = _arrays(samples, weights)
    return float(sum(wi * a.mean() for wi, a in zip(w, arrays)))


def _resampled_means(arrays: list[np.ndarray], w: np.ndarray, rng: np.random.Generator, resamples: int):
    total = np.zeros(resamples)
    for wi, a in zip(w, arrays):
        idx = rng.integers(0, a.size, size=(resamples, a.size))
        total += wi * a[idx].mean(axis=1)
    return total


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    samples: Samples,
    weights: Mapping[str, float] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of sum_t w_t * mean(samples_t), resampling samples within each task."""
    arrays, w = _arrays(samples, weights)
    rng = np.random.default_rng(seed)
    return _interval(_resampled_means(arrays, w, rng, resamples), level)


@dataclass(frozen=True)
class Paired:
    """A - B on the same samples: the difference, its paired-bootstrap CI and the sign-flip p-value."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int  # paired samples used

    @property
    def within_noise(self) -> bool:
        """The data do not tell A and B apart: the CI of the difference covers 0, or the sign-flip p-value is
        >= 0.05. With few non-zero differences the percentile bootstrap is too narrow (all differences of one sign
        give a CI that excludes 0 even for 3 of them, where the exact permutation p is 0.25), so both must agree
        before a difference is called real."""
        # round: 1 - 0.95 is 0.05000000000000004 in floats, which would call p = 0.05 a real difference
        return self.low <= 0.0 <= self.high or self.p_value >= round(1 - LEVEL, 12)


def paired_differences(a: Samples, b: Samples) -> dict[str, np.ndarray]:
    """{task: a_i - b_i}; both sides must hold the same tasks with the same number of samples (same prompts)."""
    if set(a) != set(b):
        raise ValueError(f"paired comparison needs the same tasks on both sides: {sorted(a)} vs {sorted(b)}")
    out = {}
    for task in a:
        x, y = np.asarray(a[task], dtype=float), np.asarray(b[task], dtype=float)
        if x.shape != y.shape:
            raise ValueError(
                f"task {task!r}: {x.size} vs {y.size} samples; a paired test needs the same samples"
            )
        out[task] = x - y
    return out


def paired_test(
    a: Samples,
    b: Samples,
    weights: Mapping[str, float] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Paired:
    """Compare A and B on the same samples for the weighted mean of task means (see the module docstring)."""
    diffs = paired_differences(a, b)
    arrays, w = _arrays(diffs, weights)
    observed = weighted_mean(diffs, weights)
    rng = np.random.default_rng(seed)
    low, high = _interval(_resampled_means(arrays, w, rng, resamples), level)
    flipped = np.zeros(resamples)
    for wi, d in zip(w, arrays):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(resamples, d.size))
        flipped += wi * (signs * d).mean(axis=1)
    extreme = np.count_nonzero(np.abs(flipped) >= abs(observed) - 1e-12)
    p_value = (1 + extreme) / (resamples + 1)
    return Paired(observed, low, high, float(p_value), int(sum(d.size for d in arrays)))
