"""The paper's published Llama-3-8B-Instruct numbers (paper_numbers.json), looked up by policy."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eval.longbench.data import DEFAULT_TASKS
from eval.report.policies import PLAIN_RULES, PolicyKey, keep_rules, policy_key

PATH = Path(__file__).with_name("paper_numbers.json")


@cache
def numbers() -> dict[str, Any]:
    return json.loads(PATH.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Setting:
    """What the paper ran. Its numbers sit only beside a job that ran all of it: any other model, data, task list,
    window or keep rule is another experiment, whose numbers the paper's say nothing about."""

    model: str  # the model config's name (conf/model)
    model_path: str  # the hub weights it loads
    benchmark: str
    tasks: tuple[str, ...]  # the 16 English LongBench tasks; the paper's Average is their mean
    window: int  # recent tokens kept dense
    keep_rules: tuple[str, ...]  # per-token counts of the paper's rule (reference: its code's rounding)


@cache
def setting() -> Setting:
    """The paper's setting; its model is read from paper_numbers.json (`model_aliases`: the config name and the hub
    id, the one with an owner/ prefix)."""
    data = numbers()
    path = next(a for a in data["model_aliases"] if "/" in a)
    name = next(a for a in data["model_aliases"] if a != path)
    return Setting(name, path, data["benchmark"], DEFAULT_TASKS, 32, PLAIN_RULES)


def matches(job: Mapping[str, Any], tasks: Collection[str]) -> bool:
    """Whether `job` (a job's fields, `benchmark.<key>` flattened) ran the paper's setting over `tasks`: the paper's
    model by name and weights, standard LongBench (not LongBench-E) on the full data of all its tasks, the paper's
    window and keep rules."""
    paper = setting()
    return (
        job.get("model") == paper.model
        and job.get("model_path") == paper.model_path
        and job.get("benchmark") == paper.benchmark
        and not _given(job.get("benchmark.longbench_e"))
        and not _given(job.get("benchmark.n"))  # a number: a subset of each task
        and set(paper.tasks) <= set(tasks)
        and job.get("window") == paper.window
        and all(rule in paper.keep_rules for rule in keep_rules(job))
    )


def _given(value: Any) -> bool:
    """A config value that is set (not null, missing or false)."""
    return not (value is None or (isinstance(value, float) and math.isnan(value))) and bool(value)


def table_rows(table: str) -> list[dict[str, Any]]:
    """Rows of one transcribed table; [] for an experiment the paper has no table for."""
    return numbers()["tables"].get(table, {}).get("rows", [])


def order(table: str) -> list[PolicyKey]:
    """The paper's row order for an experiment (an empty list when it has no table)."""
    return list(dict.fromkeys(policy_key(r["policy"]) for r in table_rows(table)))


def lookup(table: str) -> dict[PolicyKey, dict[str, Any]]:
    """{policy: {"name": ..., "values": {column: value}}}; the experiment's own table first, then the per-task grid
    for the same policy (its per-task numbers complete the category tables)."""
    out: dict[PolicyKey, dict[str, Any]] = {}
    for name in [table, *(t for t in numbers()["tables"] if t != table)]:
        for r in table_rows(name):
            entry = out.setdefault(policy_key(r["policy"]), {"name": r["name"], "values": {}})
            for column, value in r["values"].items():
                entry["values"].setdefault(column, value)
    return out
