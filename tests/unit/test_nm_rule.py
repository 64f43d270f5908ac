"""The N:M keep rules (`nm4`, `nm8`, `nm16`, and `nm4s`, `nm8s` over strided groups): masks against a per-element
Python reference, their errors, the policy's refusals, and layer 0 of a real model in mask mode against the stock
cache pruned by hand."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from mustafar.attention import attach, new_cache
from mustafar.config import ConfigError, KVConfig
from mustafar.pruning import exact_keep, keep_mask, nm_topk_mask


def hand_nm_mask(score: torch.Tensor, per: int, group: int, strided: bool = False) -> torch.Tensor:
    """Per element: in each group of a row keep the `per` highest scores, ties to the lower index; a group is
    `group` consecutive entries, or (`strided`) the entries j, j + d/group, j + 2d/group, ..."""
    d = score.shape[-1]
    stride = d // group
    members = (
        [list(range(j, d, stride)) for j in range(stride)]
        if strided
        else [list(range(start, start + group)) for start in range(0, d, group)]
    )
    out = []
    for row in score.reshape(-1, d).tolist():
        kept = [False] * d
        for channels in members:
            for c in sorted(channels, key=lambda c: (-row[c], c))[:per]:
                kept[c] = True
        out.append(kept)
    return torch.tensor(out).view(score.shape)


@pytest.mark.parametrize("group, strided", [(4, False), (8, False), (16, False), (4, True), (8, True)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("data", ["gauss", "ties"])
def test_nm_mask_equals_the_hand_loop(group, head_dim, data, strided):
    g = torch.Generator().manual_seed(group + head_dim)
    if data == "ties":  # few distinct values: most groups tie at their threshold
        score = torch.randint(0, 3, (2, 3, 5, head_dim), generator=g).float()
        score[0, 0, 0] = 2.0  # a row of equal scores keeps the first entries of every group
    else:
        score = torch.randn(2, 3, 5, head_dim, generator=g).abs()
    for per in range(1, group):
        keep = per * head_dim // group
        mask = nm_topk_mask(score, keep, group, strided=strided)
        assert torch.equal(mask, hand_nm_mask(score, per, group, strided))
        assert (mask.sum(-1) == keep).all()
        if data == "ties":  # a row of equal scores: each group's first `per` members
            channel = torch.arange(head_dim)
            first = channel // (head_dim // group) if strided else channel % group
            assert torch.equal(mask[0, 0, 0], first < per)


def test_nm_mask_along_another_dim_and_through_keep_mask():
    score = torch.randn(2, 2, 64, 7, generator=torch.Generator().manual_seed(3)).abs()
    along = nm_topk_mask(score, 16, 8, dim=2)
    assert torch.equal(along, nm_topk_mask(score.transpose(2, 3), 16, 8).transpose(2, 3))
    rows = score.transpose(2, 3)
    assert torch.equal(keep_mask(rows, 0.5, "nm4", thresholded=True), hand_nm_mask(rows, 2, 4))
    assert torch.equal(keep_mask(rows, 0.75, "nm8", thresholded=True), hand_nm_mask(rows, 2, 8))
    assert torch.equal(keep_mask(rows, 0.6875, "nm16", thresholded=True), hand_nm_mask(rows, 5, 16))
    assert torch.equal(keep_mask(rows, 0.5, "nm4s", thresholded=True), hand_nm_mask(rows, 2, 4, strided=True))
    assert torch.equal(
        keep_mask(rows, 0.75, "nm8s", thresholded=True), hand_nm_mask(rows, 2, 8, strided=True)
    )
    assert not torch.equal(keep_mask(rows, 0.5, "nm4s", thresholded=True), keep_mask(rows, 0.5, "nm4", True))
    assert torch.equal(keep_mask(rows, 0.0, "nm4", thresholded=True), torch.ones_like(rows, dtype=torch.bool))


def test_nm_mask_errors_name_the_values():
    score = torch.rand(1, 1, 2, 64)
    with pytest.raises(ValueError, match=r"keeping 19 of 64 entries is 1.1875 per group; .*0.75, 0.5, 0.25"):
        keep_mask(score, 0.7, "nm4", thresholded=True)
    with pytest.raises(ValueError, match="splits 8-entry groups, but there are 60 entries"):
        nm_topk_mask(torch.rand(1, 60), 30, 8)
    with pytest.raises(
        ValueError, match=r"keeping 19 of 64 entries is 4.75 per group; .*0.75, 0.6875, 0.625"
    ):
        keep_mask(score, 0.7, "nm16", thresholded=True)


def test_policy_label_refusals_and_job_identity():
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="nm4")
    assert policy.label() == "K0.5 V0.5 nm4"
    assert policy.to_dict() != KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="nm8").to_dict()
    for rule in ("nm8", "nm8s"):  # consecutive and strided groups: the stores pack both
        KVConfig(k_sparsity=0.5, keep_rule=rule, mode="compressed")
    with pytest.raises(
        ConfigError, match=r"kv.keep_rule='nm4' splits each token's keep count over its 4-channel"
    ):
        KVConfig(v_sparsity=0.5, v_direction="channel", keep_rule="nm4")


def test_attach_refuses_a_sparsity_without_whole_groups(tiny_llama):
    for policy, named in [
        (
            KVConfig(k_sparsity=0.5, v_sparsity=0.7, keep_rule="nm4"),
            "kv.v sparsity 0.7 keeps 19 of head_dim=64",
        ),
        (
            KVConfig(k_layer_sparsity=(0.5, 0.6), v_sparsity=0.5, keep_rule="nm8"),
            "kv.k sparsity 0.6 keeps 26 of head_dim=64",
        ),
    ]:
        with pytest.raises(ValueError, match=named):
            with attach(tiny_llama, new_cache(tiny_llama, policy)):
                pass


def generated_and_stock(model, policy: KVConfig, ids: torch.Tensor, new_tokens: int):
    """Generate `new_tokens` greedily after `ids` through a mask-mode cache of `policy`, and run the stock cache over
    the same tokens; returns (that cache, the stock cache, the tokens that left the window). Layer 0's K/V depend
    only on the tokens, so the stock layer 0 pruned by hand is what the mask-mode one must hold."""
    cache = new_cache(model, policy)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with attach(model, cache):
        out = model.generate(ids, past_key_values=cache, **kwargs)
    stock = DynamicCache(config=model.config)
    with torch.no_grad():
        model(out[:, :-1], past_key_values=stock)
    return cache, stock, out.shape[1] - 1 - policy.window


@pytest.mark.parametrize(
    "rule, group, strided", [("nm4", 4, False), ("nm8", 8, False), ("nm16", 16, False), ("nm4s", 4, True)]
)
def test_layer0_cache_equals_the_stock_cache_pruned_by_hand(tiny_llama, rule, group, strided):
    """Layer 0's K/V depend only on the tokens: the mask-mode cache must equal the stock one with each token that
    left the window pruned to its N:M groups (K0.5: 2:4, 4:8 or 8:16; V0.75: 1:4, 2:8 or 4:16)."""
    ids = torch.randint(1, 256, (1, 60), generator=torch.Generator().manual_seed(5))  # no pad id (0) inside
    d = 64
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.75, window=16, keep_rule=rule)
    cache, stock, n = generated_and_stock(tiny_llama, policy, ids, 8)
    for got, ref, keep in (
        (cache.layers[0].keys, stock.layers[0].keys, exact_keep(d, 0.5)),
        (cache.layers[0].values, stock.layers[0].values, exact_keep(d, 0.75)),
    ):
        expected = ref.clone()
        expected[:, :, :n] *= hand_nm_mask(ref[:, :, :n].abs(), keep * group // d, group, strided)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_policy_and_the_masks_know_the_same_nm_rules():
    from mustafar.config import NM_RULES
    from mustafar.pruning.keep import CALIBRATED_GROUPS, NM_GROUPS

    assert set(NM_RULES) == set(NM_GROUPS) | set(CALIBRATED_GROUPS)
    for (
        rule
    ) in NM_GROUPS:  # every fixed-order rule builds a mask with its own group (2 kept of 4 at s 0.5, D 64)
        group, strided = NM_GROUPS[rule]
        score = torch.randn(1, 1, 3, 64, generator=torch.Generator().manual_seed(group)).abs()
        expected = hand_nm_mask(score, group // 2, group, strided)
        assert torch.equal(keep_mask(score, 0.5, rule, thresholded=True), expected)
