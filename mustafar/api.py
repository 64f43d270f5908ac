"""`mustafar.prune`: the two-line way to prune a model's KV cache in your own script."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from mustafar.attention import attach, new_cache
from mustafar.cache import MustafarCache
from mustafar.config import KVConfig


@contextmanager
def prune(model: torch.nn.Module, policy: KVConfig | None = None, **fields: Any) -> Iterator[MustafarCache]:
    """A fresh pruning cache for one generation, attached to `model` for the duration of the block.

    Give a `KVConfig` or its fields (`k_sparsity=0.7, v_sparsity=0.7, mode="compressed"`, ...), then pass the
    yielded cache to the model as `past_key_values`; `cache.stats()` reports what was pruned. A cache holds one
    batch of sequences: open a new block for each independent `generate` call.
    """
    if policy is not None and fields:
        raise TypeError("give mustafar.prune either a KVConfig or its fields, not both")
    if isinstance(policy, Mapping):
        policy = KVConfig.from_mapping(policy)
    elif policy is None:
        policy = KVConfig.from_mapping(fields)
    elif not isinstance(policy, KVConfig):
        raise TypeError(
            f"mustafar.prune takes a KVConfig, a mapping of its fields or the fields as keywords, got "
            f"{type(policy).__name__} {policy!r}"
        )
    cache = new_cache(model, policy)
    with attach(model, cache):
        yield cache
