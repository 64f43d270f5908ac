"""The calibrated N:M rule (`nm8c`): channels dealt to 4:8 groups per (row, KV head) by their mean magnitude over
the prompt. The order against a hand-worked example and a per-element Python reference, the mask against a hand
loop, layer 0 of a real model in mask mode against the stock cache pruned by hand, padded rows as if alone, and
compressed mode's per-head store orders (refilled in place by static caches) and the Triton decoders' refusals."""

from __future__ import annotations

import pytest
import torch

from mustafar.attention import attach, new_cache
from mustafar.config import KVConfig
from mustafar.formats import CompressedStore
from mustafar.generation import generate
from mustafar.pruning import exact_keep, keep_mask
from mustafar.pruning.keep import balanced_groups, calibrated_nm_mask
from mustafar.static_cache import static_reason
from tests.unit.test_nm_rule import generated_and_stock


def hand_order(magnitude: list[float], group: int) -> list[int]:
    """Channels by decreasing magnitude (ties to the lower channel), the r-th dealt to group r mod G on even
    passes and G - 1 - (r mod G) on odd ones (G = d / group), each group filled front to back."""
    d = len(magnitude)
    n_groups = d // group
    groups: list[list[int]] = [[] for _ in range(n_groups)]
    for r, c in enumerate(sorted(range(d), key=lambda c: (-magnitude[c], c))):
        band, pos = divmod(r, n_groups)
        groups[pos if band % 2 == 0 else n_groups - 1 - pos].append(c)
    return [c for g in groups for c in g]


def hand_mask(score: list[float], order: list[int], per: int, group: int) -> list[bool]:
    """Each run of `group` positions of `order` keeps its `per` largest scores, ties to the earlier position."""
    kept = [False] * len(score)
    for start in range(0, len(order), group):
        members = list(enumerate(order[start : start + group]))
        for _, c in sorted(members, key=lambda pc: (-score[pc[1]], pc[0]))[:per]:
            kept[c] = True
    return kept


def test_balanced_groups_deal_the_channels_in_snake_order():
    # 16 channels, channel 0 largest: ranks 0..15 go to groups 0,1 | 1,0 | 0,1 | ...
    order = balanced_groups(torch.arange(16, 0, -1).float(), 8)
    assert order.tolist() == [0, 3, 4, 7, 8, 11, 12, 15, 1, 2, 5, 6, 9, 10, 13, 14]
    mags = torch.rand(2, 3, 64, generator=torch.Generator().manual_seed(0))
    mags[0, 0, :8] = 1.0  # ties: the lower channel ranks first
    got = balanced_groups(mags, 8)
    for row, m in zip(got.reshape(-1, 64).tolist(), mags.reshape(-1, 64).tolist()):
        assert row == hand_order(m, 8)
    with pytest.raises(ValueError, match="divisible by 8, got 60"):
        balanced_groups(torch.rand(60), 8)


@pytest.mark.parametrize("rule, group, sparsity, per", [("nm8c", 8, 0.5, 4), ("nm16c", 16, 0.6875, 5)])
@pytest.mark.parametrize("data", ["gauss", "ties"])
def test_calibrated_mask_equals_the_hand_loop(data, rule, group, sparsity, per):
    g = torch.Generator().manual_seed(1)
    score = torch.randn(2, 3, 5, 64, generator=g).abs()
    if data == "ties":
        score = score.round()  # many equal scores inside a group
    mags = torch.rand(2, 3, 64, generator=g)
    order = balanced_groups(mags, group).unsqueeze(2)
    for row, m in zip(order.reshape(-1, 64).tolist(), mags.reshape(-1, 64).tolist()):
        assert row == hand_order(m, group)
    mask = calibrated_nm_mask(score, 64 * per // group, group, order)
    assert torch.equal(mask, keep_mask(score, sparsity, rule, thresholded=True, order=order))
    for b in range(2):
        for h in range(3):
            for t in range(5):
                expect = hand_mask(score[b, h, t].tolist(), order[b, h, 0].tolist(), per, group)
                assert mask[b, h, t].tolist() == expect
    with pytest.raises(ValueError, match=f"'{rule}' needs the channel order"):
        keep_mask(score, sparsity, rule, thresholded=True)


def test_layer0_cache_equals_the_stock_cache_pruned_by_hand(tiny_llama):
    """Layer 0's keys depend only on the tokens: the mask-mode cache must equal the stock one with each token that
    left the window pruned to 4 of every 8 channels of its head's order, the order dealt from the prompt's mean
    |k| per channel (window included)."""
    ids = torch.randint(1, 256, (1, 60), generator=torch.Generator().manual_seed(5))
    d = 64
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.0, window=16, k_keep_rule="nm8c")
    cache, stock, n = generated_and_stock(tiny_llama, policy, ids, 8)
    ref = stock.layers[0].keys
    expected = ref.clone()
    per = exact_keep(d, 0.5) * 8 // d
    for h in range(ref.shape[1]):
        order = hand_order(ref[0, h, : ids.shape[1]].abs().mean(0).tolist(), 8)
        for t in range(n):
            kept = hand_mask(ref[0, h, t].abs().tolist(), order, per, 8)
            expected[0, h, t] *= torch.tensor(kept)
    torch.testing.assert_close(cache.layers[0].keys, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.layers[0].values, stock.layers[0].values, rtol=1e-5, atol=1e-5)


def test_padded_batch_decides_every_row_as_if_alone(tiny_llama):
    """The order is measured on each row's own prompt: pad columns never enter its mean."""
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, k_keep_rule="nm8c", v_keep_rule="nm8c", window=8)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 256, (n,), generator=g).tolist() for n in (37, 64, 90)]
    batch_cache = new_cache(tiny_llama, policy)
    batched = generate(tiny_llama, policy, prompts, 6, cache=batch_cache)
    for b, prompt in enumerate(prompts):
        cache = new_cache(tiny_llama, policy)
        alone = generate(tiny_llama, policy, [prompt], 6, cache=cache)[0]
        assert batched[b].tokens == alone.tokens
        mine, theirs = batched[b].stats, alone.stats
        assert (mine.k_kept, mine.k_judged, mine.v_kept, mine.v_judged) == (
            theirs.k_kept, theirs.k_judged, theirs.v_kept, theirs.v_judged,
        )  # fmt: skip
        for layer, own in zip(batch_cache.layers, cache.layers):
            for side in ("k", "v"):
                assert torch.equal(layer.pruners[side].order[b], own.pruners[side].order[0])


def test_triton_decoders_other_than_the_expanded_keys_refuse_it(tiny_llama, monkeypatch):
    """Compressed mode holds the order per (row, head); the PyTorch path decodes it, and of the Triton decoders
    only the scatter decoder's expanded keys (q gathered through the order, V kept 2:4): attaching where another
    Triton decoder would run, and decoding such stores through it, are refused; both static caches take it."""
    from mustafar.formats import CompressedStore
    from mustafar.kernels.dispatch import _check_store_order

    policy = KVConfig(
        k_sparsity=0.5, v_sparsity=0.5, k_keep_rule="nm8c", v_keep_rule="nm4", mode="compressed"
    )
    monkeypatch.setenv("MUSTAFAR_KERNEL_BACKEND", "triton")
    with pytest.raises(
        ValueError, match="the K store holds a per-head channel order .* the portable decoder"
    ):
        with attach(tiny_llama, new_cache(tiny_llama, policy)):  # a CPU: the portable decoder
            pass
    k = CompressedStore(1, 2, 64, torch.float16, "cpu", 32, nm_group=8)
    k.set_head_order(
        torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(h)) for h in (0, 1)])[None]
    )
    v = CompressedStore(1, 2, 64, torch.float16, "cpu", 32, nm_group=4)
    _check_store_order(k, v, "scatter")  # expanded keys: read through the order
    with pytest.raises(ValueError, match="the K store holds a per-head channel order"):
        _check_store_order(k, v, "staged")
    v.set_head_order(torch.arange(64).expand(1, 2, 64))
    with pytest.raises(ValueError, match="the V store holds a per-head channel order"):
        _check_store_order(k, v, "scatter")
    # nm16c keys (5 of 16 at s 0.6875): the scatter decoder expands them as fp8 codes only, so it refuses them
    # with fp16 values and reads them with fp8 codes
    k16, v16 = (CompressedStore(1, 2, 64, torch.float16, "cpu", 20, nm_group=16) for _ in "kv")
    k16.set_head_order(k.head_order)
    with pytest.raises(ValueError, match="the K store holds a per-head channel order .* the scatter decoder"):
        _check_store_order(k16, v16, "scatter")
    k16, v16 = (
        CompressedStore(1, 2, 64, torch.float16, "cpu", 20, nm_group=16, value_dtype="fp8") for _ in "kv"
    )
    k16.set_head_order(k.head_order)
    _check_store_order(k16, v16, "scatter")
    assert static_reason(tiny_llama, policy, 70) is None
    assert static_reason(tiny_llama, KVConfig(**{**policy.to_dict(), "mode": "mask"}), 70) is None
    with pytest.raises(
        ValueError, match="kv.k_keep_rule='nm8c' keeps the same count in every 8-channel group"
    ):
        with attach(tiny_llama, new_cache(tiny_llama, KVConfig(k_sparsity=0.6, k_keep_rule="nm8c"))):
            pass


def test_store_holds_each_heads_order():
    """A store with per-head orders packs each (row, head)'s tokens in its order (bits and values of consecutive
    groups of the order), keeps 4 of every 8 there, and reads back in channel order; the order is checked."""
    from mustafar.formats import CompressedStore
    from mustafar.kernels.reference import pack_reference

    g = torch.Generator().manual_seed(3)
    rows = torch.randn(2, 3, 5, 64, generator=g).to(torch.float16)
    order = balanced_groups(torch.rand(2, 3, 64, generator=g), 8)
    store = CompressedStore(2, 3, 64, torch.float16, "cpu", 32, nm_group=8, capacity=8)
    store.set_head_order(order)
    assert torch.equal(store.head_order, order) and store.channel_order is None
    mask = store.kept_mask(rows.abs(), 32)
    assert torch.equal(mask, calibrated_nm_mask(rows.abs(), 32, 8, order.unsqueeze(2)))
    pack_reference(store, rows, mask)
    torch.testing.assert_close(store.to_dense(), rows * mask, rtol=0, atol=0)
    store.check_word_counts()  # 4 of every 8 consecutive stored positions, 16 per 32-position word
    stored = store.to_stored(mask)
    assert torch.equal(stored, torch.gather(mask, -1, order.unsqueeze(2).expand(mask.shape)))
    assert bool((stored.view(2, 3, 5, 8, 8).sum(-1) == 4).all())
    with pytest.raises(ValueError, match="set while the store is empty"):
        store.set_head_order(order)
    store.reset()  # a static cache's next prompt: the same tensors refilled (captured graphs read them)
    held = store.head_order.data_ptr(), store.head_order_words().data_ptr()
    store.set_head_order(order.flip(-1))
    assert torch.equal(store.head_order, order.flip(-1))
    assert torch.equal(store.head_order_words(), order.flip(-1).to(torch.int32))
    assert (store.head_order.data_ptr(), store.head_order_words().data_ptr()) == held
    assert torch.equal(store.to_channels(store.to_stored(rows)), rows)
    fresh = CompressedStore(2, 3, 64, torch.float16, "cpu", 32, nm_group=8)
    with pytest.raises(ValueError, match="must be a permutation"):
        fresh.set_head_order(torch.zeros(2, 3, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"order must be \[2, 3, 64\]"):
        fresh.set_head_order(order[:1])
    with pytest.raises(ValueError, match="consecutive groups"):
        CompressedStore(2, 3, 64, torch.float16, "cpu", 32, nm_group=8, nm_strided=True).set_head_order(order)


@pytest.mark.parametrize("group", [8, 16])
def test_the_caches_own_orders_are_permutations_so_they_skip_the_check(group):
    """The caches set their calibrated orders unchecked (the check is a host sync per layer and prefill on the GPU):
    that holds only while balanced_groups returns a permutation for any magnitudes, ties and zeros included."""
    torch.manual_seed(0)
    mags = torch.cat([torch.rand(2, 3, 128), torch.zeros(1, 3, 128), torch.ones(1, 3, 128).round()])
    mags[0, 0, ::3] = 0.5  # ties
    order = balanced_groups(mags, group)
    assert torch.equal(order.sort(-1).values, torch.arange(128).expand(order.shape))
    checked, unchecked = (CompressedStore(4, 3, 128, torch.float16, "cpu", 64, nm_group=group) for _ in "ab")
    checked.set_head_order(order)
    unchecked.set_head_order(order, checked=False)
    assert torch.equal(checked.head_order, unchecked.head_order)
    assert torch.equal(checked.head_order_words(), unchecked.head_order_words())


def test_preset_composes_to_the_rule_and_its_job_label():
    """conf/kv/k50v50_kn8c_vnm4: K nm8c, V nm4, the label its experiment jobs carry, in either mode; its fp8
    variant."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        kv = OmegaConf.to_container(compose("config", overrides=["kv=k50v50_kn8c_vnm4"]).kv)
    preset = KVConfig.from_mapping(kv)
    assert preset == KVConfig(k_sparsity=0.5, v_sparsity=0.5, k_keep_rule="nm8c", v_keep_rule="nm4")
    assert preset.label() == KVConfig(**{**kv, "mode": "compressed"}).label() == "K0.5 V0.5 k-nm8c v-nm4"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        fp8 = OmegaConf.to_container(compose("config", overrides=["kv=k50v50_kn8c_vnm4_fp8"]).kv)
    # the fp8 preset: the same policy (and job ids) as the runs that spelled out kv.value_dtype=fp8
    assert KVConfig.from_mapping(fp8) == KVConfig(**{**preset.to_dict(), "value_dtype": "fp8"})
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        kv16 = OmegaConf.to_container(compose("config", overrides=["kv=k69v69_kn16c_vnm16_fp8"]).kv)
    # the 5:16 preset: the policy (and job id) of experiments/nm_quota's fp8 nm16c run, as its identity spells it
    assert KVConfig.from_mapping(kv16).to_dict() == {
        "k_sparsity": 0.6875, "v_sparsity": 0.6875, "k_direction": "token", "v_direction": "token",
        "k_scorer": "magnitude", "v_scorer": "magnitude", "window": 32, "keep_rule": "nm16c", "mode": "mask",
        "value_dtype": "fp8", "v_keep_rule": "nm16",
    }  # fmt: skip


@pytest.mark.parametrize("mode", ["mask", "compressed"])
@pytest.mark.parametrize("batch", [1, 2])
def test_static_cache_equals_the_dynamic_one(tiny_llama, batch, mode):
    """Static caches measure the order at prefill into buffers their decode steps read (mask mode: a per-side
    buffer; compressed: the stores' own order, set at allocation), refilled in place for the next batch: each
    call's logits and every layer's logical cache equal the dynamic cache's, also for a second batch after
    reset(), and a left-padded static batch gives each row's tokens and counts alone."""
    from mustafar.runner_pool import release
    from mustafar.static_cache import StaticCompressedLayer, StaticMaskLayer, static_cache
    from tests.integration.test_word_rule_in_models import assert_same_drive, static_matches_dynamic
    from tests.unit.test_static_cache import _drive, _inputs

    policy = KVConfig(
        k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", k_keep_rule="nm8c", v_keep_rule="nm4", mode=mode
    )
    layer_type = StaticMaskLayer if mode == "mask" else StaticCompressedLayer
    cache, _ = static_matches_dynamic(tiny_llama, policy, policy, batch)
    layer = cache.layers[0]
    assert isinstance(layer, layer_type)
    if mode == "mask":
        assert set(layer.orders) == {"k"}
    else:
        assert layer.stores["v"].head_order is None
        held = layer.stores["k"].head_order.data_ptr()
        assert torch.equal(layer.stores["k"].head_order, layer.pruners["k"].order[:, :, 0])
        prompt, feed = _inputs(batch, 40, 5)  # another batch than static_matches_dynamic's
        with torch.inference_mode():  # as the runner pool resets it, inside generate
            cache.reset()
        got = _drive(tiny_llama, cache, prompt, feed)
        ref = _drive(tiny_llama, new_cache(tiny_llama, policy), prompt, feed)
        assert_same_drive(ref, got)
        assert layer.stores["k"].head_order.data_ptr() == held
        assert torch.equal(layer.stores["k"].head_order, layer.pruners["k"].order[:, :, 0])
    release(tiny_llama)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(1, 256, (n,), generator=g).tolist() for n in (41, 66)]
    cache = static_cache(tiny_llama, policy, 66, 7, padded=True, shortest=41)
    assert isinstance(cache.layers[0], layer_type)
    batched = generate(tiny_llama, policy, prompts, 7, cache=cache)
    for b, prompt in enumerate(prompts):
        alone = generate(tiny_llama, policy, [prompt], 7, static=False)[0]
        assert batched[b].tokens == alone.tokens
        assert (batched[b].stats.k_kept, batched[b].stats.k_judged) == (
            alone.stats.k_kept,
            alone.stats.k_judged,
        )
