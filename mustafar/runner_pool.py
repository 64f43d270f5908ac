"""Static caches and their decode runners kept across the batches of a sweep, so a CUDA graph is captured once.

A captured decode step is bound to one cache's buffers, and a cache sized exactly for each batch (its widest
prompt + its budget) differs from batch to batch: every batch would allocate a cache and capture anew (two
eager warm-up steps and a capture). Instead the capacity is rounded up to the next multiple of
`CAPACITY_BUCKET` tokens and the (cache, `DecodeRunner`) pair is kept per key (batch size, capacity bucket,
policy, dtype, device, padded or not, kernel backend); the next batch with the same key resets the cache in place
(`StaticMustafarCache.reset`) and replays the same graph.

Why multiples of 256: a sweep's batches are sorted by prompt length, so consecutive batches mostly share a
bucket (all of a RULER task's at one length, runs of LongBench batches), while the slack stays below 256 tokens
per row, i.e. under 2 % of the cache at 16K context and under 25 % at 1K (powers of two would waste up to half).
Memory: at most `KEEP` pairs live per model (least recently used first out, dropped before a new cache is
allocated), i.e. up to two static caches (typically a task's full batch and its smaller last batch) and their
graphs' private pools stay allocated between `generate` calls; `release(model)` frees them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from mustafar.cache import kernel_backend
from mustafar.config import KVConfig
from mustafar.graphs import DecodeRunner
from mustafar.static_cache import StaticMustafarCache, static_cache

CAPACITY_BUCKET = 256
KEEP = 2
_ATTR = "_mustafar_runners"  # on the model: the pool's runners reference the model, so no global registry


def capacity_bucket(tokens: int) -> int:
    """`tokens` rounded up to a multiple of CAPACITY_BUCKET."""
    if tokens < 1:
        raise ValueError(f"a static cache needs at least one token of capacity, got {tokens}")
    return -(-tokens // CAPACITY_BUCKET) * CAPACITY_BUCKET


@dataclass(frozen=True)
class RunnerKey:
    """What a kept cache and its captured step are valid for."""

    batch: int
    capacity: int
    policy: KVConfig
    dtype: torch.dtype
    device: torch.device  # a model moved to another device must not reuse caches and graphs on the old one
    padded: bool
    backend: str


class RunnerPool:
    """Up to `keep` (cache, runner) pairs of one model, least recently used evicted first."""

    def __init__(self, keep: int = KEEP):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep
        self.runners: OrderedDict[RunnerKey, DecodeRunner] = OrderedDict()
        self.built = 0  # caches allocated (a test of reuse: batches of one key build one)

    def __deepcopy__(self, memo: dict) -> RunnerPool:
        """A copied model starts with an empty pool: graphs and caches are bound to the original's weights."""
        return RunnerPool(self.keep)

    def runner(
        self,
        model: torch.nn.Module,
        policy: KVConfig,
        batch: int,
        width: int,
        max_new_tokens: int,
        padded: bool,
        shortest: int,
    ) -> DecodeRunner:
        """A runner over an empty static cache for `batch` rows of `width` columns and `max_new_tokens` steps: the
        kept one for this key (its cache reset), else a new one (graphs on a CUDA device)."""
        param = next(model.parameters())
        key = RunnerKey(
            batch,
            capacity_bucket(width + max_new_tokens),
            policy,
            param.dtype,
            param.device,
            padded,
            kernel_backend(),
        )
        runner = self.runners.get(key)
        if runner is not None:
            # a uniform per-layer list equals the uniform policy it collapses to, so the key alone would reuse the
            # cache without checking the list's length against the model
            policy.check_layers(len(runner.cache.layers))
            self.runners.move_to_end(key)
            runner.cache.reset()
            return runner
        while len(self.runners) >= self.keep:  # free the oldest before allocating the new cache
            self.runners.popitem(last=False)
        cache = static_cache(
            model, policy, width, max_new_tokens, padded=padded, shortest=shortest, capacity=key.capacity
        )
        if not isinstance(cache, StaticMustafarCache):
            raise ValueError(f"policy {policy.label()} is outside the static scope (see static_reason)")
        self.built += 1
        runner = DecodeRunner(model, cache, graphs=param.device.type == "cuda")
        self.runners[key] = runner
        return runner


def pool_of(model: torch.nn.Module) -> RunnerPool:
    """The model's pool (created on first use)."""
    pool = model.__dict__.get(_ATTR)
    if pool is None:
        pool = RunnerPool()
        model.__dict__[_ATTR] = pool
    return pool


def release(model: torch.nn.Module) -> None:
    """Drop the model's kept caches and graphs (their memory returns to PyTorch's allocator)."""
    model.__dict__.pop(_ATTR, None)
