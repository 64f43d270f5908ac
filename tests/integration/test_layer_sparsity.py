"""Per-layer sparsity lists and error allocation in a real (tiny) model: each layer measures its own sparsity,
the mean kept count is the budget, compressed mode equals mask mode, and a left-padded batch decides every row as
it would alone."""

from __future__ import annotations

import copy

import pytest
import torch

from mustafar.attention import attach, new_cache
from mustafar.config import KVConfig
from mustafar.generation import generate
from mustafar.pruning import exact_keep
from mustafar.static_cache import static_reason

D = 64  # the tiny model's head dim


@pytest.fixture(scope="module")
def skewed_llama(tiny_llama):
    """The tiny model with a few large K channels in layer 0, head 0 and V channels in layer 1, head 1: those
    heads prune with a small error, so the error allocations give them fewer entries than the rest."""
    model = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        attn0, attn1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
        attn0.k_proj.weight[[0, 1, 32, 33]] *= 12  # rotary pairs (c, c + 32) of head 0
        attn1.v_proj.weight[D : D + 4] *= 12  # head 1
    return model


def run(model, policy, ids, steps=12, device="cpu"):
    cache = new_cache(model, policy)
    with attach(model, cache), torch.inference_mode():
        out = model.generate(
            ids.to(device),
            attention_mask=torch.ones_like(ids).to(device),
            past_key_values=cache,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out, cache


def assert_same_generation(a, b):
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def ids_of(batch=1, length=70, seed=3):
    return torch.randint(1, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_each_layer_measures_its_list_entry_in_both_modes(tiny_llama):
    lists = {"k_layer_sparsity": [0.5, 0.9], "v_layer_sparsity": [0.7, 0.2]}
    ids = ids_of(batch=2)
    masked, mcache = run(tiny_llama, KVConfig(**lists), ids)
    compressed, ccache = run(tiny_llama, KVConfig(mode="compressed", **lists), ids)
    assert_same_generation(masked, compressed)
    for cache in (mcache, ccache):
        for i, layer in enumerate(cache.layers):
            for side in ("k", "v"):
                pruner = layer.pruners[side]
                keep = exact_keep(D, lists[f"{side}_layer_sparsity"][i])
                assert pruner.judged > 0 and pruner.kept * D == pruner.judged * keep
    for i, layer in enumerate(ccache.layers):  # each layer's stores use that layer's keep (fixed layout)
        assert layer.stores["k"].keep == exact_keep(D, lists["k_layer_sparsity"][i])
        assert layer.stores["v"].keep == exact_keep(D, lists["v_layer_sparsity"][i])


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("mode", ["mask", "compressed"])
def test_a_dense_list_entry_counts_in_the_measured_sparsity(tiny_llama, mode, static):
    """A layer a list leaves dense (entry 0) judges the tokens the pruned layer judges and keeps them all, so the
    measured sparsity is the list's mean: hand-worked, [0, 0.7] at D 64 keeps 64 and 19 of 64, 1 - 83/128. Per
    row of a padded batch and for the whole cache alike; a side no layer prunes still judges nothing (None)."""
    policy = KVConfig(k_layer_sparsity=[0.0, 0.7], mode=mode)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 256, (n,), generator=g).tolist() for n in (50, 70)]
    cache = new_cache(tiny_llama, policy) if not static else None
    outs = generate(tiny_llama, policy, prompts, 6, cache=cache, static=static)
    for out, prompt in zip(outs, prompts):
        st = out.stats
        pruned_tokens = len(prompt) + 5 - policy.window  # the last generated token is never cached
        assert st.k_judged == 2 * pruned_tokens * tiny_llama.config.num_key_value_heads * D
        assert st.k_sparsity == pytest.approx(1 - (D + exact_keep(D, 0.7)) / (2 * D))
        assert st.v_judged == 0 and st.v_sparsity is None
    if cache is not None:
        whole = cache.stats()
        assert whole.k_kept == sum(o.stats.k_kept for o in outs)
        assert whole.k_judged == sum(o.stats.k_judged for o in outs)


@pytest.mark.parametrize("allocation", ["error", "error_head"])
def test_error_allocation_spends_the_budget_and_compressed_equals_mask(skewed_llama, allocation):
    kw = {"k_sparsity": 0.7, "v_sparsity": 0.7, "allocation": allocation}
    ids = ids_of()
    masked, mcache = run(skewed_llama, KVConfig(**kw), ids)
    compressed, ccache = run(skewed_llama, KVConfig(mode="compressed", **kw), ids)
    assert_same_generation(masked, compressed)
    budget = exact_keep(D, 0.7)
    layers, heads = len(mcache.layers), skewed_llama.config.num_key_value_heads
    for side in ("k", "v"):
        keeps = mcache.layers[0].allocator.keeps[side]  # [B, L, H]
        assert torch.equal(keeps, ccache.layers[0].allocator.keeps[side])
        assert int(keeps.sum()) == layers * heads * budget  # the mean kept count is the uniform budget
        assert len(set(keeps.flatten().tolist())) > 1  # the skewed heads really were given fewer entries
        for i, layer in enumerate(mcache.layers):  # each layer prunes with its own keeps...
            pruner = layer.pruners[side]
            assert torch.equal(pruner.keeps, keeps[:, i])
            assert pruner.kept * D == pruner.judged * float(keeps[0, i].float().mean())
        stats = mcache.stats()  # ...and the cache measures the budget's sparsity
        kept, judged = (stats.k_kept, stats.k_judged) if side == "k" else (stats.v_kept, stats.v_judged)
        assert kept * D == judged * budget
    k_keeps = mcache.layers[0].allocator.keeps["k"]
    assert int(k_keeps[0, 0, 0]) < budget  # layer 0, head 0 has the large K channels
    if allocation == "error":  # one keep per layer: fixed-layout stores of that keep
        assert [layer.stores["k"].keep for layer in ccache.layers] == k_keeps[0, :, 0].tolist()
    else:  # heads of a layer differ: the variable layout
        assert ccache.layers[0].stores["k"].keep is None
    assert mcache.stats().k_kept == ccache.stats().k_kept


@pytest.mark.parametrize("mode", ["mask", "compressed"])
def test_padded_batch_decides_every_row_as_if_alone(skewed_llama, mode):
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.5, allocation="error_head", mode=mode)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 256, (n,), generator=g).tolist() for n in (45, 70, 101)]
    batch_cache = new_cache(skewed_llama, policy)
    batched = generate(skewed_llama, policy, prompts, 8, cache=batch_cache)
    for b, prompt in enumerate(prompts):
        cache = new_cache(skewed_llama, policy)
        alone = generate(skewed_llama, policy, [prompt], 8, cache=cache)[0]
        assert batched[b].tokens == alone.tokens
        mine, theirs = batched[b].stats, alone.stats
        assert (mine.k_kept, mine.k_judged, mine.v_kept, mine.v_judged) == (
            theirs.k_kept, theirs.k_judged, theirs.v_kept, theirs.v_judged,
        )  # fmt: skip
        assert mine.kv_payload_bytes == theirs.kv_payload_bytes
        for side in ("k", "v"):
            assert torch.equal(
                batch_cache.layers[0].allocator.keeps[side][b], cache.layers[0].allocator.keeps[side][0]
            )


def test_static_cache_serves_lists_and_declines_allocation(tiny_llama):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 256, (n,), generator=g).tolist() for n in (70, 70)]
    for mode in ("mask", "compressed"):
        policy = KVConfig(k_layer_sparsity=[0.5, 0.8], v_layer_sparsity=[0.9, 0.0], mode=mode)
        assert static_reason(tiny_llama, policy, 70) is None
        dynamic = generate(tiny_llama, policy, prompts, 10, static=False)
        static = generate(tiny_llama, policy, prompts, 10, static=True)
        for d, s in zip(dynamic, static, strict=True):
            assert s.tokens == d.tokens
            assert (s.stats.k_kept, s.stats.k_judged, s.stats.v_kept, s.stats.v_judged) == (
                d.stats.k_kept, d.stats.k_judged, d.stats.v_kept, d.stats.v_judged,
            )  # fmt: skip
    policy = KVConfig(k_sparsity=0.7, allocation="error")
    assert "kv.allocation=error" in static_reason(tiny_llama, policy, 70)


@pytest.mark.slow
@pytest.mark.usefixtures("triton_interpreter")
def test_triton_kernels_serve_per_layer_and_per_head_keeps(skewed_llama, monkeypatch):
    monkeypatch.setenv("MUSTAFAR_KERNEL_BACKEND", "triton")
    ids = ids_of(length=40)
    for kw in (
        {"k_layer_sparsity": [0.5, 0.8], "v_layer_sparsity": [0.7, 0.3]},  # fixed layout, one keep per layer
        {"k_sparsity": 0.7, "v_sparsity": 0.7, "allocation": "error_head"},  # variable layout
    ):
        masked, _ = run(skewed_llama, KVConfig(**kw), ids, steps=3)
        compressed, _ = run(skewed_llama, KVConfig(mode="compressed", **kw), ids, steps=3)
        assert_same_generation(masked, compressed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "kw",
    [
        {"k_layer_sparsity": [0.5, 0.8], "v_layer_sparsity": [0.7, 0.3]},
        {"k_sparsity": 0.7, "v_sparsity": 0.7, "allocation": "error"},
        {"k_sparsity": 0.7, "v_sparsity": 0.7, "allocation": "error_head"},
    ],
    ids=["lists", "error", "error_head"],
)
def test_gpu_compressed_per_layer_keeps_equal_mask_mode(skewed_llama, kw):
    model = copy.deepcopy(skewed_llama).cuda()
    ids = ids_of(batch=2, length=300)
    masked, _ = run(model, KVConfig(**kw), ids, steps=16, device="cuda")
    compressed, cache = run(model, KVConfig(mode="compressed", **kw), ids, steps=16, device="cuda")
    assert_same_generation(masked, compressed)
    assert cache.layers[0].stored > 0
