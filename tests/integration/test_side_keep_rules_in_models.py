"""Per-side keep rules inside a real model (tiny random Llama, head_dim 64, fp32, CPU): mask mode prunes each side
by its own rule (against the stock cache pruned by hand), and compressed mode, whose stores pack 2:4, 2:8 or 5:16
consecutive groups, 4:8 or 2:4 strided ones and 4:8 groups calibrated per head (in the stores' stored order),
equals mask mode for the dynamic and
the static caches (tokens, counts, teacher-forced logits and dense views), batch 1 and left-padded batch 2; every
stored token keeps its word and group counts."""

from __future__ import annotations

import warnings

import pytest
import torch

from mustafar.attention import attach, new_cache
from mustafar.cache import nm_group, nm_strided, word_quota
from mustafar.config import KVConfig
from mustafar.generation import generate
from mustafar.runner_pool import release
from mustafar.static_cache import StaticCompressedLayer, static_cache
from tests.integration.test_word_rule_in_models import (
    assert_same_outputs,
    compressed_matches_mask,
    prompts,
    static_matches_dynamic,
)
from tests.unit.test_nm_rule import generated_and_stock, hand_nm_mask
from tests.unit.test_word_rule import hand_word_mask

POLICIES = [
    KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", v_keep_rule="nm4"),  # conf/kv/k50v50_word_vnm4
    KVConfig(k_sparsity=0.5, k_scorer="output_aware", v_sparsity=0.75, v_keep_rule="nm8", window=8),
    KVConfig(k_sparsity=0.5, v_sparsity=0.5, k_keep_rule="nm8", window=0),  # V exact: a plain store
    # conf/kv/k50v50_kn8s_vnm4: K 4:8 strided groups (the fused top-k pack), V 2:4 consecutive
    KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", k_keep_rule="nm8s", v_keep_rule="nm4"),
    # output-aware K packed from its 2:4 strided mask, V 2:8 strided groups
    KVConfig(
        k_sparsity=0.5,
        k_scorer="output_aware",
        k_keep_rule="nm4s",
        v_sparsity=0.75,
        v_keep_rule="nm8s",
        window=8,
    ),
    # K word at 0.7 (19 of 64: 10 + 9), V 5 of every 16 consecutive channels (20 of 64 at 0.6875: 10 per word)
    KVConfig(k_sparsity=0.7, v_sparsity=0.6875, keep_rule="word", v_keep_rule="nm16"),
    # conf/kv/k50v50_kn8s_vnm4_fp8: the strided-key format with fp8 codes on both sides (mask mode simulates them)
    KVConfig(
        k_sparsity=0.5,
        v_sparsity=0.5,
        keep_rule="word",
        k_keep_rule="nm8s",
        v_keep_rule="nm4",
        value_dtype="fp8",
    ),
    # conf/kv/k50v50_kn8c_vnm4: K 4:8 groups calibrated per row and head (per-head store orders), V 2:4; and
    # with fp8 codes
    KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", k_keep_rule="nm8c", v_keep_rule="nm4"),
    KVConfig(
        k_sparsity=0.5,
        v_sparsity=0.5,
        keep_rule="word",
        k_keep_rule="nm8c",
        v_keep_rule="nm4",
        value_dtype="fp8",
    ),
    # K 5 of every 16 channels calibrated per row and head (nm16c), V 5 of every 16 consecutive ones (s 0.6875)
    KVConfig(k_sparsity=0.6875, v_sparsity=0.6875, keep_rule="word", k_keep_rule="nm16c", v_keep_rule="nm16"),
]
STATIC = [POLICIES[0], POLICIES[1], *POLICIES[3:]]
LENGTHS = (37, 70)  # left pads 33 and 0 in one batch
BUDGETS = (6, 9)


def _id(policy: KVConfig) -> str:
    return f"{policy.label()}-w{policy.window}".replace(" ", "_")


def _compressed(policy: KVConfig) -> KVConfig:
    return KVConfig(**{**policy.to_dict(), "mode": "compressed"})


def check_stores(cache, policy: KVConfig) -> int:
    """Each side's stores carry its rule's word quotas and group size, and every stored token keeps them; returns
    the tokens checked."""
    checked = 0
    for layer in cache.layers:
        for side in ("k", "v"):
            store = layer.stores[side]
            flags = (word_quota(policy, side), nm_group(policy, side), nm_strided(policy, side))
            assert (store.word_quota, store.nm_group, store.nm_strided) == flags
            if store.word_quota:
                static = isinstance(layer, StaticCompressedLayer)
                rows = layer.stored.tolist() if static else store.row_lengths()
                store.check_word_counts(rows)
                checked += sum(rows)
    return checked


def test_mask_mode_prunes_each_side_by_its_rule(tiny_llama):
    """Layer 0's K/V depend only on the tokens: the mask-mode cache equals the stock one with every token that left
    the window pruned to K's word quotas (32 of 64: 16 + 16) and V's 2:4 groups."""
    ids = torch.randint(1, 256, (1, 50), generator=torch.Generator().manual_seed(2))
    policy = KVConfig(**{**POLICIES[0].to_dict(), "window": 16})
    cache, stock, n = generated_and_stock(tiny_llama, policy, ids, 6)
    keys, values = stock.layers[0].keys.clone(), stock.layers[0].values.clone()
    keys[:, :, :n] *= hand_word_mask(keys[:, :, :n].abs(), 32)
    values[:, :, :n] *= hand_nm_mask(values[:, :, :n].abs(), 2, 4)
    torch.testing.assert_close(cache.layers[0].keys, keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.layers[0].values, values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "rule, named",
    [
        ("nm4", r"kv.v_keep_rule='nm4' .* kv.v sparsity 0.7 keeps 19 of head_dim=64"),
        (
            "nm16",
            r"kv.v_keep_rule='nm16' keeps the same count in every 16-channel group, but kv.v sparsity 0.7 keeps 19 "
            r"of head_dim=64 \(4.75 per group\); sparsities with whole groups: 0.9375, .*, 0.75, 0.6875, 0.625, ",
        ),
    ],
    ids=["nm4", "nm16"],
)
def test_attach_names_the_side_whose_sparsity_has_no_whole_groups(tiny_llama, rule, named):
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.7, keep_rule="word", v_keep_rule=rule)
    with pytest.raises(ValueError, match=named):
        with attach(tiny_llama, new_cache(tiny_llama, policy)):
            pass


@pytest.mark.parametrize("policy", POLICIES, ids=_id)
@pytest.mark.parametrize("lengths", [LENGTHS[1:], LENGTHS], ids=["batch1", "batch2-padded"])
def test_dynamic_compressed_equals_mask_mode(tiny_llama, policy, lengths):
    cache, _ = compressed_matches_mask(tiny_llama, policy, lengths, list(BUDGETS[-len(lengths) :]))
    assert check_stores(cache, policy) > 0


@pytest.mark.parametrize("mode", ["mask", "compressed"])
@pytest.mark.parametrize("policy", STATIC, ids=_id)
@pytest.mark.parametrize("batch", [1, 2])
def test_static_equals_dynamic_mask_mode_step_by_step(tiny_llama, mode, policy, batch):
    """Teacher-forced logits and every layer's logical cache after each call: the static cache (mask or compressed)
    against the dynamic mask-mode cache."""
    under = KVConfig(**{**policy.to_dict(), "mode": mode})
    cache, _ = static_matches_dynamic(tiny_llama, policy, under, batch)
    if mode == "compressed":
        assert check_stores(cache, policy) > 0


@pytest.mark.parametrize("policy", [POLICIES[0], POLICIES[3], POLICIES[7]], ids=_id)
def test_static_padded_batch_equals_mask_mode(tiny_llama, policy):
    """A left-padded static compressed batch: mask mode's tokens and counts, pads never stored, every row's stored
    tokens in count."""
    release(tiny_llama)
    ps = prompts()
    cache = static_cache(
        tiny_llama, _compressed(policy), max(LENGTHS), max(BUDGETS), padded=True, shortest=min(LENGTHS)
    )
    assert isinstance(cache.layers[0], StaticCompressedLayer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the dynamic cache
        batch = generate(tiny_llama, _compressed(policy), ps, list(BUDGETS), cache=cache)
    assert_same_outputs(generate(tiny_llama, policy, ps, list(BUDGETS), static=False), batch)
    assert check_stores(cache, policy) > 0


@pytest.mark.parametrize(
    "policy,refused",
    [
        (
            KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="nm8s", mode="compressed"),
            True,
        ),  # strided values
        (
            KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", k_keep_rule="nm4s", mode="compressed"),
            True,
        ),
        (
            KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", v_keep_rule="nm4", mode="compressed"),
            False,
        ),
    ],
    ids=["nm8s", "k-nm4s", "k-word-v-nm4"],
)
def test_attach_refuses_strided_stores_the_triton_decoder_cannot_read(
    tiny_llama, monkeypatch, policy, refused
):
    """On the Triton path (here the interpreter's portable decoder, which reads no strided order) a compressed
    strided side is refused when the model is attached, before any prefill; the PyTorch path reads every order."""
    monkeypatch.setenv("MUSTAFAR_KERNEL_BACKEND", "triton")
    cache = new_cache(tiny_llama, policy)
    if refused:
        with pytest.raises(ValueError, match="strided N:M stores"), attach(tiny_llama, cache):
            pass
    else:
        with attach(tiny_llama, cache):
            pass
    monkeypatch.setenv("MUSTAFAR_KERNEL_BACKEND", "torch")
    with attach(tiny_llama, new_cache(tiny_llama, policy)):
        pass
