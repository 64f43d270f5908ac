"""The one definition of every summary column (averages, category means) as weights over task scores.

A summary value is sum_t w_t * score_t, so the same weights give the value, its bootstrap CI and a paired
difference (eval.stats). Definitions:

- `avg`: mean of the task scores present. For LongBench it is over the *English* tasks only: the paper's Average
  (the mean of the 16 English task scores); comparable with published numbers only when all 16 are present.
- LongBench `avg_categories`: the leaderboard's English average, the mean of the category means (English
  categories only, each the mean of its present tasks).
- LongBench category columns (`Single-Doc QA`, ...): mean of the category's present English tasks.
- LongBench `avg_zh` (only when a Chinese task ran): the leaderboard's Chinese average, the mean of the Chinese
  table's category means (its Code category is lcc and repobench-p, as on the leaderboard). Chinese tasks never
  enter `avg`, `avg_categories` or the English categories.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Weights = dict[str, dict[str, float]]  # {summary column: {task: weight}}


def _mean_of(tasks: list[str]) -> dict[str, float]:
    return {t: 1.0 / len(tasks) for t in tasks}


def _mean_of_groups(groups: list[list[str]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for tasks in groups:
        for t, w in _mean_of(tasks).items():
            out[t] = out.get(t, 0.0) + w / len(groups)
    return out


def longbench_weights(tasks: Iterable[str]) -> Weights:
    from eval.longbench.data import CHINESE_TASKS
    from eval.longbench.metrics import EN_CATEGORY_TASKS, ZH_CATEGORY_TASKS

    present = list(dict.fromkeys(tasks))
    english = [t for cat in EN_CATEGORY_TASKS.values() for t in cat if t in present]
    out: Weights = {}
    categories = []
    for category, members in EN_CATEGORY_TASKS.items():
        have = [t for t in members if t in present]
        if have:
            out[category] = _mean_of(have)
            categories.append(have)
    if english:
        out["avg"] = _mean_of(english)
        out["avg_categories"] = _mean_of_groups(categories)
    if any(t in CHINESE_TASKS for t in present):
        zh_groups = [[t for t in m if t in present] for m in ZH_CATEGORY_TASKS.values()]
        out["avg_zh"] = _mean_of_groups([g for g in zh_groups if g])
    return out


def weights(benchmark: str, tasks: Iterable[str]) -> Weights:
    """Summary columns of `benchmark` for the tasks that ran, in display order."""
    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        return {}
    if benchmark == "longbench":
        return longbench_weights(tasks)
    return {"avg": _mean_of(tasks)}


def combine(task_scores: Mapping[str, float], column_weights: Mapping[str, float]) -> float:
    return sum(w * task_scores[t] for t, w in column_weights.items())


def summarize(benchmark: str, task_scores: Mapping[str, float]) -> dict[str, float]:
    """{summary column: value rounded to 2 decimals} from {task: score}."""
    return {name: round(combine(task_scores, w), 2) for name, w in weights(benchmark, task_scores).items()}
