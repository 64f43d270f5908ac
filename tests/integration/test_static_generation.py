"""`mustafar.generate(static=True)` (a static cache, eager steps on a CPU) equals the dynamic path: the same greedy
tokens and the same per-row measured sparsity, for a left-padded batch and for each prompt alone."""

from __future__ import annotations

import warnings

import pytest
import torch

from mustafar.config import KVConfig
from mustafar.generation import generate
from mustafar.static_cache import StaticMustafarCache, static_reason

LENGTHS = (37, 70, 101)  # pads 64, 31 and 0 in one batch
BUDGETS = (9, 4, 12)  # different stop points per row


def prompts(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 256, (n,), generator=g).tolist() for n in lengths]


def assert_same(dynamic, static):
    for d, s in zip(dynamic, static, strict=True):
        assert s.tokens == d.tokens
        assert s.stopped_by == d.stopped_by
        assert s.stats == d.stats


POLICIES = [
    KVConfig(),
    KVConfig(k_sparsity=0.5, v_sparsity=0.5),
    KVConfig(k_sparsity=0.7, v_sparsity=0.7, window=0),
    KVConfig(k_sparsity=0.7, v_sparsity=0.7, k_scorer="output_aware", v_scorer="output_aware"),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.label()}-w{p.window}")
def test_static_padded_batch_equals_dynamic(tiny_llama, policy):
    ps = prompts()
    dynamic = generate(tiny_llama, policy, ps, list(BUDGETS), static=False)
    assert policy.dense or any(d.stats.k_judged for d in dynamic)  # pruning was measured
    assert_same(dynamic, generate(tiny_llama, policy, ps, list(BUDGETS), static=True))


def test_static_batch_of_one_equals_dynamic(tiny_llama):
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.7)
    for p, n in zip(prompts(), BUDGETS):
        assert_same(
            generate(tiny_llama, policy, [p], n, static=False),
            generate(tiny_llama, policy, [p], n, static=True),
        )


def test_static_stop_ids_snapshot_each_row_at_its_stop(tiny_llama):
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5)
    ps = prompts()
    free = generate(tiny_llama, policy, ps, 12, static=False)
    stop = free[0].tokens[2]  # row 0 stops early, the others run on
    dynamic = generate(tiny_llama, policy, ps, 12, stop_ids=[stop], static=False)
    assert dynamic[0].stopped_by == "stop_id"
    assert_same(dynamic, generate(tiny_llama, policy, ps, 12, stop_ids=[stop], static=True))


def test_static_compressed_unpadded_equals_dynamic(tiny_llama):
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, mode="compressed")
    ps = prompts((70, 70))
    dynamic = generate(tiny_llama, policy, ps, 10, static=False)
    static = generate(tiny_llama, policy, ps, 10, static=True)
    for d, s in zip(dynamic, static, strict=True):
        assert s.tokens == d.tokens
        counts = ("k_kept", "k_judged", "v_kept", "v_judged", "dense_bytes")
        assert [getattr(s.stats, c) for c in counts] == [getattr(d.stats, c) for c in counts]


def test_static_think_keys_unpadded_equal_dynamic(tiny_llama):
    policy = KVConfig(k_sparsity=0.7, k_scorer="think", v_sparsity=0.5)
    ps = prompts((70, 70), seed=1)
    assert static_reason(tiny_llama, policy, 70) is None
    dynamic = generate(tiny_llama, policy, ps, [8, 5], static=False)
    assert dynamic[0].stats.k_judged > 0
    assert_same(dynamic, generate(tiny_llama, policy, ps, [8, 5], static=True))


@pytest.mark.parametrize(
    "policy",
    [KVConfig(k_sparsity=0.5, v_sparsity=0.5, mode="compressed"), KVConfig(k_sparsity=0.5, k_scorer="think")],
    ids=["compressed", "think"],
)
def test_out_of_scope_padding_falls_back_to_the_dynamic_cache(tiny_llama, policy):
    assert static_reason(tiny_llama, policy, 101) is None
    assert "padded" in static_reason(tiny_llama, policy, 101, padded=True)
    ps = prompts()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        static = generate(tiny_llama, policy, ps, list(BUDGETS), static=True)
    assert_same(generate(tiny_llama, policy, ps, list(BUDGETS), static=False), static)


def test_auto_stays_dynamic_on_cpu_and_static_needs_a_fresh_cache(tiny_llama, monkeypatch):
    built = []
    real = StaticMustafarCache.__init__

    def spy(self, *args, **kwargs):
        built.append(args)
        real(self, *args, **kwargs)

    monkeypatch.setattr(StaticMustafarCache, "__init__", spy)
    p = prompts()[0]
    generate(tiny_llama, KVConfig(), [p], 3)
    assert built == []
    generate(tiny_llama, KVConfig(), [p], 3, static=True)
    assert built[0][2] == len(p) + 3  # capacity: the prompt + the budget
    from mustafar.attention import new_cache

    with pytest.raises(ValueError, match="static=True"):
        generate(tiny_llama, KVConfig(), [p], 3, cache=new_cache(tiny_llama, KVConfig()), static=True)
