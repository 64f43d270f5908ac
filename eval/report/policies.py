"""Names and keys of KV policies as the paper's tables name them, derived from result-row fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mustafar.config import KVConfig

KEY_FIELDS = ("k_sparsity", "v_sparsity", "k_direction", "v_direction", "k_scorer", "v_scorer")
PolicyKey = tuple[float, float, str, str, str, str]

RULES = {  # (direction, scorer) -> the paper's wording
    ("channel", "think"): "ThinK (structured)",
    ("token", "magnitude"): "Magnitude (per-token)",
    ("token", "output_aware"): "Output-aware (per-token)",
    ("channel", "magnitude"): "Magnitude (per-channel)",
    ("channel", "output_aware"): "Output-aware (per-channel)",
}


def policy_key(row: Mapping[str, Any]) -> PolicyKey:
    """The six fields that decide what is pruned, normalised like KVConfig does (so dense == dense)."""
    cfg = KVConfig(**{f: row[f] for f in KEY_FIELDS}).to_dict()
    return tuple(cfg[f] for f in KEY_FIELDS)  # type: ignore[return-value]


def rule(direction: str, scorer: str) -> str:
    return RULES[(direction, scorer)]


def family(key: PolicyKey) -> str:
    """Which pruned side(s) with which rule, without the sparsity: one line per family in the plots."""
    ks, vs, kd, vd, kc, vc = key
    if ks == 0 and vs == 0:
        return "Dense"
    if vs == 0:
        return f"K {rule(kd, kc)}"
    if ks == 0:
        return f"V {rule(vd, vc)}"
    kr, vr = rule(kd, kc), rule(vd, vc)
    return f"K+V {kr}" if kr == vr else f"K {kr} + V {vr}"


def sparsity(key: PolicyKey) -> float:
    """The x value of a policy in accuracy-vs-sparsity plots: the sparsity of the pruned side(s)."""
    return max(key[0], key[1])
