"""Generation-engine audit: nested `attach` blocks, `MustafarCache.reset`, bad prompts named before the model runs,
and per-row payload bytes under an allocation that do not depend on the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DynamicCache

import mustafar
from mustafar.attention import new_cache
from mustafar.cache_kwarg import cache_kwargs
from mustafar.config import KVConfig
from mustafar.generation import generate


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 256, (n,), generator=g).tolist() for n in lengths]


def counts(s):
    return (s.k_kept, s.k_judged, s.v_kept, s.v_judged, s.dense_bytes, s.kv_payload_bytes)


def magnitude_pruned(x: torch.Tensor, s: float) -> torch.Tensor:
    """Plain per-token magnitude pruning: keep the round-half-up((1 - s)·D) largest |x| of each token (ties to the
    lower channel), zero the rest."""
    d = x.shape[-1]
    keep = int((1 - s) * d + 0.5)
    kept = torch.sort(-x.abs().float(), dim=-1, stable=True).indices[..., :keep]
    return x.masked_fill(~torch.zeros_like(x, dtype=torch.bool).scatter(-1, kept, True), 0)


@torch.inference_mode()
def reference_run(model, prompt, n, s, window):
    """Greedy tokens and the final cache of one prompt through a stock DynamicCache, every token outside the window
    pruned by hand after each step (the schedule of docs/method.md §1), K and V at sparsity `s`."""
    cache = DynamicCache()
    out = model(input_ids=torch.tensor([prompt]), use_cache=True, **cache_kwargs(model, cache))
    logits = out.logits[:, -1]
    done, tokens = 0, []
    for i in range(n):
        tokens.append(int(logits.argmax(-1)))
        end = max(0, cache.get_seq_length() - window)
        for layer in cache.layers:
            layer.keys[:, :, done:end] = magnitude_pruned(layer.keys[:, :, done:end], s)
            layer.values[:, :, done:end] = magnitude_pruned(layer.values[:, :, done:end], s)
        done = end
        if i < n - 1:
            step = model(input_ids=torch.tensor([[tokens[-1]]]), use_cache=True, **cache_kwargs(model, cache))
            logits = step.logits[:, -1]
    return tokens, cache


def test_generate_inside_a_prune_block_leaves_the_block_attached(tiny_llama):
    """`mustafar.generate` (its own cache or the block's) inside `mustafar.prune`: the block's cache stays bound
    and the block exits cleanly (the inner attach unbound it and the outer exit raised AttributeError)."""
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4)
    prompt = prompts((40,))[0]
    ids = torch.tensor([prompt])
    want, _ = reference_run(tiny_llama, prompt, 6, 0.5, 4)
    before = tiny_llama.config._attn_implementation
    with mustafar.prune(tiny_llama, policy) as cache:
        assert generate(tiny_llama, policy, [prompt], 6)[0].tokens == want
        with torch.inference_mode():
            out = tiny_llama.generate(
                ids, attention_mask=torch.ones_like(ids), past_key_values=cache, max_new_tokens=6,
                do_sample=False, pad_token_id=0,
            )  # fmt: skip
        assert out[0, len(prompt) :].tolist() == want
    assert tiny_llama.config._attn_implementation == before
    with mustafar.prune(tiny_llama, policy) as cache:  # the block's own cache, passed to generate
        assert generate(tiny_llama, policy, [prompt], 6, cache=cache)[0].tokens == want
        assert all(layer.bound for layer in cache.layers)
    assert not any(layer.bound for layer in cache.layers)
    assert not any(hasattr(m, "_mustafar_layer") for m in tiny_llama.modules())


@pytest.mark.parametrize(
    "policy",
    [
        KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4),
        KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4, mode="compressed"),
        KVConfig(k_sparsity=0.5, k_direction="channel", v_sparsity=0.5, window=4),
        KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4, allocation="error"),
    ],
    ids=["mask", "compressed", "channel", "allocation"],
)
def test_a_reset_cache_prunes_the_next_batch_as_a_fresh_one(tiny_llama, policy):
    """`cache.reset()` (transformers' `Cache.reset`) then a new batch: the same tokens, statistics and pruned cache
    as a fresh cache (the old pruners' positions survived the reset: the new prompt was not pruned at all while
    the statistics kept reporting the old batch's counts)."""
    first, second = prompts((37, 70, 50), seed=1), prompts((45,), seed=2)
    cache = new_cache(tiny_llama, policy)
    generate(tiny_llama, policy, first, 5, cache=cache)
    cache.reset()
    assert cache.get_seq_length() == 0
    reused = generate(tiny_llama, policy, second, 7, cache=cache)[0]
    fresh_cache = new_cache(tiny_llama, policy)
    fresh = generate(tiny_llama, policy, second, 7, cache=fresh_cache)[0]
    assert reused.tokens == fresh.tokens and counts(reused.stats) == counts(fresh.stats)
    assert counts(cache.stats()) == counts(fresh_cache.stats())
    for layer, fresh_layer in zip(cache.layers, fresh_cache.layers):
        for t, t1 in zip(layer.dense_view(), fresh_layer.dense_view()):
            assert torch.equal(t, t1)
    if policy.mode == "mask" and policy.k.direction == "token" and policy.allocation == "uniform":
        want, ref = reference_run(tiny_llama, second[0], 7, 0.5, 4)
        assert reused.tokens == want
        for layer, ref_layer in zip(cache.layers, ref.layers):
            torch.testing.assert_close(layer.keys, ref_layer.keys, rtol=0, atol=0)
            torch.testing.assert_close(layer.values, ref_layer.values, rtol=0, atol=0)


def test_a_reset_cache_serves_hf_generate_again(tiny_llama):
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.7, window=4)
    prompt = prompts((40,), seed=3)[0]
    ids = torch.tensor([prompt])
    with mustafar.prune(tiny_llama, policy) as cache, torch.inference_mode():
        for _ in range(2):
            cache.reset()
            tiny_llama.generate(
                ids, attention_mask=torch.ones_like(ids), past_key_values=cache, max_new_tokens=5,
                do_sample=False, pad_token_id=0,
            )  # fmt: skip
    alone = generate(tiny_llama, policy, [prompt], 5)[0]
    assert counts(cache.stats())[:5] == counts(alone.stats)[:5]
    outside = cache.layers[0].keys[:, :, : len(prompt) - 4]  # the prompt's tokens outside the window
    assert float((outside == 0).float().mean()) == 0.5  # the second prompt really was pruned


def test_bad_prompts_and_pad_ids_are_named(tiny_llama):
    policy = KVConfig()
    cases = [
        ([1, 2, 3], r"prompts\[0\]=1 is not a list of token ids"),  # one prompt not wrapped in a list
        ("hello", "prompts='hello' must be a list of prompts"),
        (["hello"], r"prompts\[0\]='hello' is not a list of token ids"),
        ([[1.5, 2]], "prompt 0 holds 1.5, not a token id"),
        ([[3, 4], [1, True]], "prompt 1 holds True, not a token id"),
        ([[1, 2], []], "prompt 1 is empty: every prompt needs at least one token"),
        ([], "generate needs at least one prompt"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(tiny_llama, policy, bad, 3)
    for pad in (None, 1.5):  # a tokenizer without a pad token gives None
        with pytest.raises(ValueError, match=f"pad_id={pad} is not a token id"):
            generate(tiny_llama, policy, [[1, 2, 3], [4, 5]], 3, pad_id=pad)
    with pytest.raises(TypeError, match="cache= takes a MustafarCache .* got DynamicCache"):
        generate(tiny_llama, policy, [[1, 2]], 3, cache=DynamicCache())
    # a 2-d tensor or array of ids is one prompt per row (it crashed on its truth value)
    ps = prompts((9, 9), seed=4)
    want = [o.tokens for o in generate(tiny_llama, policy, ps, 4)]
    for given in (torch.tensor(ps), np.array(ps), [torch.tensor(p) for p in ps]):
        assert [o.tokens for o in generate(tiny_llama, policy, given, 4)] == want


def test_allocation_payload_bytes_do_not_depend_on_the_batch(tiny_llama):
    """Compressed mode under `kv.allocation=error`: a row's keeps are one count per layer, so alone its stores have
    the fixed layout; in a batch whose rows keep different counts the stores are variable, and the row's
    kv_payload_bytes counted the variable layout's per-token offsets (more bytes batched than alone)."""
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, allocation="error", window=8, mode="compressed")
    ps = prompts((3, 20, 33, 64, 9))
    budgets = [1, 5, 9, 2, 4]
    batched = generate(tiny_llama, policy, ps, budgets)
    for p, n, out in zip(ps, budgets, batched):
        cache = new_cache(tiny_llama, policy)
        alone = generate(tiny_llama, policy, [p], n, cache=cache)[0]
        assert cache.stats().kv_payload_bytes == alone.stats.kv_payload_bytes  # the stores' own byte count
        assert out.tokens == alone.tokens and counts(out.stats) == counts(alone.stats)


@pytest.mark.parametrize("mode", ["mask", "compressed"])
def test_a_callers_static_cache_refuses_a_batch_it_cannot_serve_and_resets_outside_inference_mode(
    tiny_llama, mode
):
    """A static cache built by the caller (`static_cache`) and passed to `generate`: a batch wider than its
    capacity, of another batch size after `reset()`, or (compressed) with a row shorter than the window is one
    ValueError before the prompt runs (were index errors deep in the layers, or a capacity error after the
    prefill); `reset()` works outside inference mode (it raised: generate made the buffers inference tensors),
    and the reset cache gives what the dynamic path gives."""
    from mustafar.static_cache import static_cache

    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, mode=mode)
    ps = prompts((40, 64, 50), seed=5)
    cache = static_cache(tiny_llama, policy, 64, 10, padded=True, shortest=40)
    generate(tiny_llama, policy, ps, 6, cache=cache)
    cache.reset()
    with pytest.raises(ValueError, match="holds 3 rows, the batch has 1"):
        generate(tiny_llama, policy, [ps[1]], 6, cache=cache)
    with pytest.raises(ValueError, match="holds 74 tokens per row, the batch needs 64 prompt columns"):
        generate(tiny_llama, policy, ps, 12, cache=cache)
    if mode == "compressed":
        with pytest.raises(ValueError, match=r"row's prompt \(5 tokens\) is shorter than kv.window=32"):
            generate(tiny_llama, policy, [ps[0], ps[1], ps[2][:5]], 6, cache=cache)
    other = prompts((64, 33, 64), seed=6)
    got = generate(tiny_llama, policy, other, [11, 4, 7], cache=cache)  # 64 + 11 - 1 = 74 columns: fits
    want = generate(tiny_llama, policy, other, [11, 4, 7], static=False)
    assert [o.tokens for o in got] == [o.tokens for o in want]
    assert [counts(o.stats) for o in got] == [counts(o.stats) for o in want]


def test_unusable_stop_ids_and_static_flags_are_refused(tiny_llama):
    """A stop id outside the vocabulary can never be generated (the row would silently never stop on it), and a
    non-boolean `static` was read by its truth value ("false" meant True)."""
    vocab = tiny_llama.get_input_embeddings().num_embeddings
    policy = KVConfig()
    for bad in (-1, vocab):
        with pytest.raises(ValueError, match=rf"stop id {bad} \(row 0\) is outside the model's vocabulary"):
            generate(tiny_llama, policy, [[1, 2, 3]], 3, stop_ids=[2, bad])
    with pytest.raises(ValueError, match=rf"stop id {vocab} \(row 1\)"):
        generate(tiny_llama, policy, [[1, 2], [3, 4]], 3, stop_ids=[[2], [vocab]])
    for bad in ("yes", "false", 0.5, 1.0, 0.0, 1, 0):  # 1.0 == True: a membership test let numbers through
        with pytest.raises(TypeError, match="must be True, False or None"):
            generate(tiny_llama, policy, [[1, 2, 3]], 3, static=bad)
    # a flat list with one bad entry is one shared collection: the bad entry is named, not a good one or a count
    for n in (1, 2):
        with pytest.raises(ValueError, match=r"stop_ids holds 2\.5, not a token id"):
            generate(tiny_llama, policy, [[1, 2, 3]] * n, 3, stop_ids=[1, 2.5])
    assert (
        len(generate(tiny_llama, policy, [[1, 2, 3]], 3, stop_ids=[vocab - 1], static=False)[0].tokens) <= 3
    )


def test_a_prompt_exactly_a_window_long_decodes_statically_with_output_aware_keys(tiny_llama):
    """Nothing of such a prompt has left the window at prefill, so output-aware pruning gives no mask: the static
    compressed cache packed from that missing mask and crashed. It must decode as the dynamic cache does."""
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, k_scorer="output_aware", mode="compressed", window=8)
    for width in (8, 9):
        ps = [list(range(1, width + 1))]
        static = generate(tiny_llama, policy, ps, 12, static=True)
        dynamic = generate(tiny_llama, policy, ps, 12, static=False)
        assert static[0].tokens == dynamic[0].tokens
        assert counts(static[0].stats) == counts(dynamic[0].stats)


def test_a_pooled_static_cache_still_checks_a_layer_lists_length(tiny_llama):
    """A uniform list equals the uniform policy it collapses to, so the pool's key matched a cache built for the
    uniform policy and reused it without checking the list's length against the model."""
    from mustafar.config import ConfigError

    layers = tiny_llama.config.num_hidden_layers
    generate(
        tiny_llama, KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4), [[1, 2, 3, 4, 5, 6]], 3, static=True
    )
    bad = KVConfig(k_layer_sparsity=[0.5] * (layers + 1), v_sparsity=0.5, window=4)
    with pytest.raises(ConfigError, match=f"{layers + 1} entries but the model has {layers} layers"):
        generate(tiny_llama, bad, [[1, 2, 3, 4, 5, 6]], 3, static=True)
