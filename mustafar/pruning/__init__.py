"""Pruning rules: keep counts, scores, and the per-layer schedule that applies them."""

from mustafar.pruning.keep import (
    exact_keep,
    fixed_count_mask,
    head_topk_mask,
    keep_mask,
    nm_topk_mask,
    reference_think_keep,
    reference_topk_keep,
    threshold_mask,
    topk_mask,
    word_quotas,
    word_topk_mask,
)
from mustafar.pruning.pruner import Observation, RowPruner, SidePruner

__all__ = [
    "Observation",
    "RowPruner",
    "SidePruner",
    "exact_keep",
    "fixed_count_mask",
    "head_topk_mask",
    "keep_mask",
    "nm_topk_mask",
    "reference_think_keep",
    "reference_topk_keep",
    "threshold_mask",
    "topk_mask",
    "word_quotas",
    "word_topk_mask",
]
