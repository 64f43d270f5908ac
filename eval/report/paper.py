"""The paper's published Llama-3-8B-Instruct numbers (paper_numbers.json), looked up by policy."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from eval.report.policies import PolicyKey, policy_key

PATH = Path(__file__).with_name("paper_numbers.json")


@cache
def numbers() -> dict[str, Any]:
    return json.loads(PATH.read_text(encoding="utf-8"))


def matches(model: str, model_path: str | None, benchmark: str) -> bool:
    """Paper numbers are shown only for the paper's model on the paper's benchmark."""
    data = numbers()
    return benchmark == data["benchmark"] and bool({model, model_path} & set(data["model_aliases"]))


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
