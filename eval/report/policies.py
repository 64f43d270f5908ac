"""Names and keys of KV policies as the paper's tables name them, derived from result-row fields."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mustafar.config import KVConfig

KEY_FIELDS = ("k_sparsity", "v_sparsity", "k_direction", "v_direction", "k_scorer", "v_scorer")
# what else changes the cache a policy keeps: a job with any of these set is not the paper's plain policy
VARIANT_FIELDS = (
    "evict", "token_budget", "evict_window", "evict_pool", "keep_rule", "k_keep_rule", "v_keep_rule",
    "value_dtype", "allocation", "k_layer_sparsity", "v_layer_sparsity",
)  # fmt: skip
PolicyKey = tuple[float, float, str, str, str, str, str]
PLAIN_RULES = ("exact", "reference")  # the paper's per-token counts (reference: its code's rounding)

RULES = {  # (direction, scorer) -> the paper's wording
    ("channel", "think"): "ThinK (structured)",
    ("token", "magnitude"): "Magnitude (per-token)",
    ("token", "output_aware"): "Output-aware (per-token)",
    ("channel", "magnitude"): "Magnitude (per-channel)",
    ("channel", "output_aware"): "Output-aware (per-channel)",
}


def _field(row: Mapping[str, Any], name: str, default: Any) -> Any:
    """A row's field, or its default where the row predates it (missing, None or NaN)."""
    value = row.get(name, default)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value


def keep_rules(row: Mapping[str, Any]) -> list[str]:
    """The keep rule of each pruned side (its own rule, else keep_rule): an unpruned side's rule changes nothing."""
    active = [s for s in ("k", "v") if float(_field(row, f"{s}_sparsity", 0.0)) > 0]
    return [_field(row, f"{s}_keep_rule", "") or _field(row, "keep_rule", "exact") for s in active]


def variant(row: Mapping[str, Any]) -> str:
    """Everything besides the six pruning fields that changes what a job's cache holds, as a short name: token
    eviction, keep rules other than the paper's, fp8 values, a per-layer allocation; "" for a plain policy (the
    paper's rows, a dense job)."""
    parts = []
    evict = _field(row, "evict", "none")
    if evict != "none":
        name = f"{evict}{int(_field(row, 'token_budget', 0))}"
        name += (
            f"/w{int(_field(row, 'evict_window', 32))}" if int(_field(row, "evict_window", 32)) != 32 else ""
        )
        name += f"/p{int(_field(row, 'evict_pool', 7))}" if int(_field(row, "evict_pool", 7)) != 7 else ""
        parts.append(name)
    rules = keep_rules(row)
    if any(r not in PLAIN_RULES for r in rules):
        parts.append("/".join(dict.fromkeys(rules)))
    if _field(row, "value_dtype", "native") != "native":
        parts.append(str(row["value_dtype"]))
    if _field(row, "allocation", "uniform") != "uniform":
        parts.append(f"{row['allocation']} allocation")
    if any(_field(row, f"{s}_layer_sparsity", None) for s in ("k", "v")):
        parts.append("per-layer")
    return " ".join(parts)


def policy_key(row: Mapping[str, Any]) -> PolicyKey:
    """The six fields that decide what is pruned, normalised like KVConfig does (so dense == dense), and the
    policy's :func:`variant`: a SnapKV, fp8 or N:M job never takes a plain policy's paper row or plot line."""
    cfg = KVConfig(**{f: row[f] for f in KEY_FIELDS}).to_dict()
    six = {f: cfg[f] for f in KEY_FIELDS}
    return (*six.values(), variant({**row, **six}))  # type: ignore[return-value]


def rule(direction: str, scorer: str) -> str:
    return RULES[(direction, scorer)]


def family(key: PolicyKey) -> str:
    """Which pruned side(s) with which rule and variant, without the sparsity: one line per family in the plots.
    "Dense" is only the job that changes nothing (eviction alone is its own family)."""
    ks, vs, kd, vd, kc, vc, extra = key
    if ks == 0 and vs == 0:
        return extra or "Dense"
    if vs == 0:
        base = f"K {rule(kd, kc)}"
    elif ks == 0:
        base = f"V {rule(vd, vc)}"
    else:
        kr, vr = rule(kd, kc), rule(vd, vc)
        base = f"K+V {kr}" if kr == vr else f"K {kr} + V {vr}"
    return f"{base}, {extra}" if extra else base


def sparsity(key: PolicyKey) -> float:
    """The x value of a policy in accuracy-vs-sparsity plots: the sparsity of the pruned side(s)."""
    return max(key[0], key[1])
