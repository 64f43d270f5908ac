"""The cache keyword of a model's forward: `cache` (transformers >= 5.24) or `past_key_values` (earlier), read from
the forward's signature once per model class, and what `mustafar.generate` passes on either branch."""

from __future__ import annotations

import pytest
import torch

import mustafar.cache_kwarg as ck
from mustafar.config import KVConfig
from mustafar.generation import generate


class NewForward(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs):
        return cache


class OldForward(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs):
        return past_key_values


class KwargsOnly(torch.nn.Module):
    def forward(self, *args, **kwargs):
        return kwargs


@pytest.mark.parametrize(
    "cls, name", [(NewForward, "cache"), (OldForward, "past_key_values"), (KwargsOnly, "past_key_values")]
)
def test_kwarg_follows_the_forward_signature(cls, name):
    model = cls()
    assert ck.cache_kwarg(model) == name
    assert ck.cache_kwargs(model, "the cache") == {name: "the cache"}
    assert model(**ck.cache_kwargs(model, "the cache")) in ("the cache", {name: "the cache"})


def test_signature_is_read_once_per_class(monkeypatch):
    reads = []
    real = ck.inspect.signature
    monkeypatch.setattr(ck.inspect, "signature", lambda f: reads.append(f) or real(f))

    class Fresh(torch.nn.Module):  # not seen before, so not cached yet
        def forward(self, cache=None):
            return cache

    for _ in range(3):
        ck.cache_kwarg(Fresh())
    assert len(reads) == 1


def test_installed_transformers_picks_its_own_name(tiny_llama):
    """transformers >= 5.24 (the project machine) names `cache` in the forward; 5.17 (the GPU machine) does not."""
    import transformers
    from packaging.version import Version

    renamed = Version(transformers.__version__).release >= (5, 24)
    assert ck.cache_kwarg(tiny_llama) == ("cache" if renamed else "past_key_values")


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_generate_passes_the_picked_keyword(tiny_llama, monkeypatch, static):
    """Both branches (monkeypatched) reach the model under their own keyword and give the same tokens."""
    g = torch.Generator().manual_seed(11)
    ps = [torch.randint(1, 256, (n,), generator=g).tolist() for n in (20, 33)]
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4)
    seen: list[set[str]] = []

    def hook(module, args, kwargs):
        seen.append({k for k in ("cache", "past_key_values") if k in kwargs})

    handle = tiny_llama.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        tokens = {}
        for name in ("past_key_values", "cache"):
            monkeypatch.setattr(ck, "_kwarg_of", lambda cls, name=name: name)
            seen.clear()
            tokens[name] = [o.tokens for o in generate(tiny_llama, policy, ps, 5, static=static)]
            assert seen and all(s == {name} for s in seen)
    finally:
        handle.remove()
    assert tokens["cache"] == tokens["past_key_values"]
