"""The keyword a model's forward takes its KV cache by, read once per model class from its signature.

transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name still works with a deprecation
warning and is removed in 5.40); earlier releases, such as the 5.17 on the GPU machines, only know
`past_key_values`. The library's own model calls pass the cache through `cache_kwargs`, so they work on both.
"""

from __future__ import annotations

import functools
import inspect

import torch

NEW, OLD = "cache", "past_key_values"


@functools.cache
def _kwarg_of(model_cls: type) -> str:
    """`cache` where the forward names it, else `past_key_values`: a forward that names neither (only `**kwargs`)
    predates the rename too."""
    return NEW if NEW in inspect.signature(model_cls.forward).parameters else OLD


def cache_kwarg(model: torch.nn.Module) -> str:
    """`"cache"` or `"past_key_values"`: the name `model.forward` takes its KV cache by."""
    return _kwarg_of(type(model))


def cache_kwargs(model: torch.nn.Module, cache) -> dict:
    """`{name: cache}` for `model(**inputs, **cache_kwargs(model, cache))`."""
    return {cache_kwarg(model): cache}
