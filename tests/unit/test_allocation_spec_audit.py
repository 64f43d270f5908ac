"""Allocation details from a spec audit (docs/method.md §7): the error terms' precision, and a side that prunes
nothing does not need keep_rule=exact."""

from __future__ import annotations

import pytest
import torch

from mustafar.allocation import pruning_error_terms, relative_error
from mustafar.cache import MustafarCache
from mustafar.config import ConfigError, KVConfig
from mustafar.pruning import Observation, exact_keep


def _fp64_terms(rows: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """By hand: every entry's fp32 square, summed in fp64; the dropped ones are all but the `keep` largest."""
    sq = rows.float().square()
    kept = sq.sort(dim=-1, descending=True).values[..., :keep]
    dropped = sq.double().sum(-1) - kept.double().sum(-1)
    return dropped.sum(-1), sq.double().sum((-1, -2))


def test_error_terms_are_fp32_squares_summed_in_fp64():
    # keys crowd their energy into a few large channels: at a keep near D the dropped energy is ~1e-7 of the
    # total, which fp32's "total minus kept" cancelled to noise (errors off by orders of magnitude)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 500, 128, generator=g)
    x[..., :4] *= 40
    for keep in (exact_keep(128, 0.05), exact_keep(128, 0.1), exact_keep(128, 0.7)):
        dropped, total = pruning_error_terms(x, keep)
        want_dropped, want_total = _fp64_terms(x, keep)
        assert dropped.dtype == total.dtype == torch.float64
        torch.testing.assert_close(dropped, want_dropped, rtol=1e-9, atol=0)
        torch.testing.assert_close(total, want_total, rtol=1e-12, atol=0)
        torch.testing.assert_close(
            relative_error(dropped, total), relative_error(want_dropped, want_total), rtol=1e-9, atol=0
        )


def test_padded_error_terms_equal_the_row_alone():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 300, 64, generator=g)
    x[..., :2] *= 30
    padded = torch.cat([torch.randn(1, 2, 17, 64, generator=g) * 50, x], dim=2)
    alone = pruning_error_terms(x, 60)
    batched = pruning_error_terms(torch.cat([padded, padded]), 60, pads=[17, 0])
    for a, b in zip(alone, batched):
        torch.testing.assert_close(b[:1], a, rtol=1e-12, atol=0)


def test_a_side_that_prunes_nothing_does_not_need_keep_rule_exact():
    # V prunes nothing, so kv.keep_rule (which only V follows here) is moot; K prunes under its own exact rule
    policy = KVConfig(k_sparsity=0.75, keep_rule="word", k_keep_rule="exact", allocation="error", window=4)
    assert policy.allocation == "error" and policy.side_keep_rule("k") == "exact"
    cache = MustafarCache(policy, num_layers=2)
    g = torch.Generator().manual_seed(2)
    for layer in cache.layers:
        layer.bound = True
        k = torch.rand(1, 1, 12, 32, generator=g)
        layer.update(k, k.clone())
    for layer in cache.layers:
        layer.after_attention(Observation(q_len=12))
    keeps = [int(layer.pruners["k"].keeps) for layer in cache.layers]
    assert sum(keeps) == 2 * exact_keep(32, 0.75)
    assert all(layer.pruners["v"].keeps is None for layer in cache.layers)  # V keeps every entry


def test_a_pruned_side_under_another_rule_is_still_refused():
    with pytest.raises(ConfigError, match="kv.keep_rule=exact"):
        KVConfig(k_sparsity=0.75, v_sparsity=0.5, keep_rule="word", k_keep_rule="exact", allocation="error")
