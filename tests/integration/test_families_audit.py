"""Black-box audit of the model families through the public API (`mustafar.prune`, `mustafar.generate`), against
references written here: a stock transformers `DynamicCache` pruned by hand after every step (top-|x| per token,
the newest `window` tokens dense), counts worked out from the prompt lengths, and ThinK's channel choice and SnapKV's
budget re-derived from K/V captured on the way into the cache.

test_families.py checks each family at one policy on unpadded prompts; here: left-padded batches with prompts
shorter than, equal to and longer than the default 32-token window, prompts longer than the families' 16-token
sliding window through `model.generate` (the README's two-line API), and mask mode against compressed mode for
the policy families."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

import mustafar
from mustafar import KVConfig
from mustafar.architectures import ARCHS, random_config
from mustafar.cache_kwarg import cache_kwargs
from mustafar.config import ConfigError

VOCAB = 256
HEAD_DIMS = {"llama": 64, "mistral": 64, "qwen2": 128, "qwen3": 64, "phi3": 96, "gemma2": 256, "gemma3": 256}
SLIDING = ("mistral", "phi3", "gemma2", "gemma3")  # every layer, or alternate layers, see 16 tokens
LAYERS, KV_HEADS = 2, 2
_MODELS: dict[str, torch.nn.Module] = {}


def family_model(arch: str) -> torch.nn.Module:
    if arch not in _MODELS:
        sizes = dict(
            vocab_size=VOCAB,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=KV_HEADS,
            head_dim=HEAD_DIMS[arch],
            max_position_embeddings=512,
            initializer_range=0.1,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        if arch == "gemma2":
            sizes["attn_logit_softcapping"] = 1.0  # binds on random weights (50 would not)
        torch.manual_seed(0)
        _MODELS[arch] = AutoModelForCausalLM.from_config(random_config(arch, sizes)).eval()
    return _MODELS[arch]


def modes(arch: str) -> tuple[str, ...]:
    return ("mask",) if arch == "gemma2" else ("mask", "compressed")  # Gemma-2's soft-cap: mask mode only


def prompts(lengths, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def keep_of(d: int, s: float) -> int:
    return int((1 - s) * d + 0.5)  # round half up: the README's round((1 - s)·D)


def top_magnitude(x: torch.Tensor, s: float) -> torch.Tensor:
    """Zero all but the keep_of(D, s) largest |x| of each token (ties to the lower channel)."""
    kept = torch.sort(-x.abs(), dim=-1, stable=True).indices[..., : keep_of(x.shape[-1], s)]
    return x.masked_fill(~torch.zeros_like(x, dtype=torch.bool).scatter(-1, kept, True), 0)


@torch.inference_mode()
def hand_pruned_run(model, prompt: list[int], n: int, ks: float, vs: float, window: int = 32):
    """Greedy tokens and final K/V of one prompt through a stock DynamicCache (full layers: the model's own masks
    apply the sliding windows), every token older than the newest `window` pruned by hand after each step."""
    cache = DynamicCache()
    logits = model(input_ids=torch.tensor([prompt]), use_cache=True, **cache_kwargs(model, cache)).logits[
        :, -1
    ]
    done, tokens = 0, []
    for i in range(n):
        tokens.append(int(logits.argmax(-1)))
        end = max(0, cache.get_seq_length() - window)
        for layer in cache.layers:
            layer.keys[:, :, done:end] = top_magnitude(layer.keys[:, :, done:end], ks)
            layer.values[:, :, done:end] = top_magnitude(layer.values[:, :, done:end], vs)
        done = end
        if i < n - 1:
            step = model(input_ids=torch.tensor([[tokens[-1]]]), use_cache=True, **cache_kwargs(model, cache))
            logits = step.logits[:, -1]
    return tokens, [(layer.keys, layer.values) for layer in cache.layers]


def cached_kv(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What a layer of a MustafarCache holds, as dense tensors (zeros at pruned entries)."""
    return cache.layers[layer].dense_view()


def expected_counts(length: int, d: int, s: float, window: int = 32) -> tuple[int, int]:
    """(kept, judged) entries of one side of one row: every token older than the window, each KV head, each layer."""
    pruned = max(0, length - window)
    return LAYERS * KV_HEADS * pruned * keep_of(d, s), LAYERS * KV_HEADS * pruned * d


# ---------------------------------------------------------------------------------------------------------------
# per-token magnitude against a hand-pruned stock cache: left padding, prompts around the window


@pytest.mark.parametrize(("arch", "mode"), [(a, m) for a in ARCHS for m in modes(a)])
def test_padded_batch_equals_a_hand_pruned_stock_cache_per_row(arch, mode):
    """Prompts of 20, 32 and 45 tokens (shorter than, equal to, longer than the window) in one left-padded batch:
    each row's tokens, its cache (top-|x| per token past the window, the newest 32 tokens dense) and its counts
    equal a hand-pruned stock cache of that prompt alone."""
    model, ks, vs, n = family_model(arch), 0.5, 0.7, 6
    batch = prompts([20, 32, 45], seed=5)
    cache = mustafar.MustafarCache(KVConfig(k_sparsity=ks, v_sparsity=vs, mode=mode), LAYERS)
    outs = mustafar.generate(model, cache.policy, batch, max_new_tokens=n, min_new_tokens=n, cache=cache)
    d, width = HEAD_DIMS[arch], max(map(len, batch))
    for row, (prompt, out) in enumerate(zip(batch, outs, strict=True)):
        tokens, kv = hand_pruned_run(model, prompt, n, ks, vs)
        assert out.tokens == tokens
        pad = width - len(prompt)
        for layer, (k_ref, v_ref) in enumerate(kv):
            k, v = cached_kv(cache, layer)
            torch.testing.assert_close(k[row : row + 1, :, pad:], k_ref, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(v[row : row + 1, :, pad:], v_ref, rtol=1e-4, atol=1e-5)
        cached = len(prompt) + n - 1  # the last token is chosen, never cached
        s = out.stats
        assert (s.k_kept, s.k_judged) == expected_counts(cached, d, ks)
        assert (s.v_kept, s.v_judged) == expected_counts(cached, d, vs)
    assert len({t for o in outs for t in o.tokens}) >= 6, (
        "degenerate random model: equal tokens prove nothing"
    )


# ---------------------------------------------------------------------------------------------------------------
# sliding-window layers through `model.generate`: the layer's own mask must not be read as left padding


@pytest.mark.parametrize("arch", SLIDING)
def test_model_generate_on_sliding_layers_prunes_and_counts_every_token(arch):
    """`mustafar.prune` + `model.generate` on a batch of a 48-token prompt (3x the sliding window) and a left-padded
    30-token one: each row's tokens and cache equal its hand-pruned stock run, and its counts cover all its tokens.

    The pad count used to be read off the last query's mask row, which on a sliding-window layer hides every
    column older than the window: an unpadded 48-token prompt counted 32 pads, so its pruned tokens were never
    counted (stats said K0 of nothing judged) and rules that start at a row's first token went wrong (below)."""
    model, ks, vs, n = family_model(arch), 0.5, 0.5, 5
    batch = prompts([48, 30], seed=2)
    ids = torch.tensor([batch[0], [0] * 18 + batch[1]])
    mask = torch.ones_like(ids)
    mask[1, :18] = 0
    d = HEAD_DIMS[arch]
    for mode in modes(arch):
        with mustafar.prune(model, k_sparsity=ks, v_sparsity=vs, mode=mode) as cache, torch.inference_mode():
            out = model.generate(
                ids, attention_mask=mask, past_key_values=cache, max_new_tokens=n, min_new_tokens=n,
                do_sample=False, pad_token_id=0,
            )  # fmt: skip
        for row, (prompt, stats) in enumerate(zip(batch, cache.row_stats(), strict=True)):
            tokens, kv = hand_pruned_run(model, prompt, n, ks, vs)
            assert out[row, 48:].tolist() == tokens, (mode, row)
            cached = len(prompt) + n - 1
            assert (stats.k_kept, stats.k_judged) == expected_counts(cached, d, ks), (mode, row)
            assert (stats.v_kept, stats.v_judged) == expected_counts(cached, d, vs), (mode, row)
            pad = 48 - len(prompt)
            for layer, (k_ref, v_ref) in enumerate(kv):
                k, v = cached_kv(cache, layer)
                torch.testing.assert_close(k[row : row + 1, :, pad:], k_ref, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(v[row : row + 1, :, pad:], v_ref, rtol=1e-4, atol=1e-5)


def record_updates(cache) -> list[list[torch.Tensor]]:
    """Keep a dense copy of the K and V each layer of `cache` receives (before any pruning)."""
    seen = [[] for _ in cache.layers]
    for layer, store in zip(cache.layers, seen):

        def update(k, v, *args, _update=layer.update, _store=store, **kwargs):
            _store.append((k.clone(), v.clone()))
            return _update(k, v, *args, **kwargs)

        layer.update = update
    return seen


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
@pytest.mark.parametrize("mode", ["mask", "compressed"])
def test_think_values_on_sliding_layers_drop_the_same_low_energy_channels_of_every_prompt_token(arch, mode):
    """ThinK on V (score: mean v² over the prompt per channel) through `mustafar.prune` + a forward pass of an
    unpadded 40-token prompt: every prompt token keeps exactly the keep_of(D, s) channels of highest mean v².

    Old behaviour on a sliding-window layer: the first 24 tokens were taken for padding, kept the first `keep`
    channels (the pad mask), and ThinK was scored on the last 16 tokens only."""
    model, s, t = family_model(arch), 0.5, 40
    d = HEAD_DIMS[arch]
    with mustafar.prune(model, v_sparsity=s, v_scorer="think", mode=mode) as cache, torch.inference_mode():
        seen = record_updates(cache)
        model(torch.tensor(prompts([t], seed=3)), past_key_values=cache, use_cache=True)
    for layer, ((_, v_dense),) in enumerate(seen):
        energy = v_dense.double().square().mean(dim=2)  # [1, H, D]
        channels = torch.topk(energy, keep_of(d, s), dim=-1).indices
        kept = torch.zeros_like(energy, dtype=torch.bool).scatter(-1, channels, True)
        want = v_dense * kept.unsqueeze(2)
        torch.testing.assert_close(cached_kv(cache, layer)[1], want, rtol=0, atol=0)
    assert cache.stats().v_judged == LAYERS * KV_HEADS * t * d


@pytest.mark.parametrize("arch", ["mistral", "phi3", "gemma3"])
def test_snapkv_through_model_generate_keeps_the_token_budget_on_sliding_layers(arch):
    """kv.evict=snapkv with `mustafar.prune` + a forward pass: a 60-token prompt keeps token_budget=40 tokens per
    KV head, the observation window among them; old behaviour on sliding-window layers: nothing was evicted
    (44 of the 60 prompt tokens were taken for padding, which eviction never touches)."""
    model, budget, obs = family_model(arch), 40, 8
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, evict="snapkv", token_budget=budget, evict_window=obs)
    with mustafar.prune(model, policy) as cache, torch.inference_mode():
        seen = record_updates(cache)
        model(torch.tensor(prompts([60], seed=4)), past_key_values=cache, use_cache=True)
    d = HEAD_DIMS[arch]
    for layer, ((k_dense, _),) in enumerate(seen):
        k, _ = cached_kv(cache, layer)
        assert k.shape[2] == budget
        torch.testing.assert_close(k[:, :, -obs:], k_dense[:, :, -obs:], rtol=0, atol=0)  # inside the window
    assert cache.stats().evicted_bytes == LAYERS * KV_HEADS * (60 - budget) * d * 4 * 2  # fp32 K and V


def _survivors(prefill_keys: torch.Tensor, cached: torch.Tensor) -> list[set[int]]:
    """Each KV head's surviving prompt positions, found by matching the cached keys against the prompt's own (keys
    are cached after RoPE: every prompt key is distinct)."""
    return [
        {int((prefill_keys[0, h] == k).all(-1).nonzero()) for k in cached[0, h]}
        for h in range(cached.shape[1])
    ]


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
@pytest.mark.parametrize("mode", ["mask", "compressed"])
def test_decode_after_eviction_keeps_each_local_layers_window_in_original_positions(arch, mode):
    """SnapKV leaves 40 of a 60-token prompt per KV head, right-aligned in the cache. Every decode step must then
    attend, on a sliding-window (16-token) layer, only to survivors whose original position lies inside the window:
    the reference is a stock DynamicCache (nothing evicted, transformers' own window masks) whose attention also
    hides each head's evicted prompt tokens. Old behaviour: the window was counted in compacted cache columns, so
    the first step saw survivors 16-18 positions back (logits off by 1-6)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    model, n, budget = family_model(arch), 5, 40
    prompt = prompts([60], seed=7)[0]
    policy = KVConfig(evict="snapkv", token_budget=budget, evict_window=8, mode=mode)
    logits = []
    hook = model.lm_head.register_forward_hook(lambda m, a, out: logits.append(out[:, -1].float().clone()))
    try:
        cache = mustafar.MustafarCache(policy, LAYERS)
        seen = record_updates(cache)
        ours = mustafar.generate(model, policy, [prompt], n, min_new_tokens=n, cache=cache)[0].tokens
        kept = [_survivors(seen[i][0][0], cached_kv(cache, i)[0][:, :, :budget]) for i in range(LAYERS)]
        ours_logits, logits[:] = torch.stack(logits), []

        def hide_evicted(module, query, key, value, attention_mask, **kwargs):
            q_len, t = query.shape[2], key.shape[2]
            if attention_mask is None:  # causal, nothing else hidden (transformers may skip the mask)
                attention_mask = torch.ones(q_len, t, dtype=torch.bool).tril(t - q_len).view(1, 1, q_len, t)
            visible = attention_mask[..., :t].expand(-1, key.shape[1], -1, -1).clone()
            if query.shape[2] == 1:  # decode: each head's evicted prompt positions hidden
                for h, heads in enumerate(kept[module.layer_idx]):
                    visible[0, h, :, [c for c in range(len(prompt)) if c not in heads]] = False
            groups = query.shape[1] // key.shape[1]
            mask = visible.repeat_interleave(groups, dim=1)
            kwargs.pop("sliding_window", None)
            return sdpa_attention_forward(module, query, key, value, mask, **kwargs)

        AttentionInterface.register("hide_evicted", hide_evicted)
        AttentionMaskInterface.register("hide_evicted", sdpa_mask)
        before = model.config._attn_implementation
        model.set_attn_implementation("hide_evicted")
        try:
            with torch.inference_mode():
                ref_cache, ids, ref = DynamicCache(), torch.tensor([prompt]), []
                out = model(input_ids=ids, past_key_values=ref_cache, use_cache=True)
                for step in range(n):
                    ref.append(int(out.logits[0, -1].argmax()))
                    if step < n - 1:
                        out = model(
                            input_ids=torch.tensor([[ref[-1]]]),
                            position_ids=torch.tensor([[len(prompt) + step]]),
                            past_key_values=ref_cache,
                            use_cache=True,
                        )
        finally:
            model.set_attn_implementation(before)
    finally:
        hook.remove()
    assert ours == ref
    torch.testing.assert_close(ours_logits, torch.stack(logits), rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
@pytest.mark.parametrize("mode", ["mask", "compressed"])
def test_a_padded_batch_after_eviction_decodes_each_row_as_alone_on_sliding_layers(arch, mode):
    """Prompts of 64, 45 and 20 tokens (the last within the budget, so it gets new pads after eviction), left-padded
    into one batch: `mustafar.generate` and `model.generate` both give every row the tokens it gets alone (which
    the test above checks against the reference), on models with 16-token sliding-window layers."""
    model, policy = family_model(arch), KVConfig(evict="snapkv", token_budget=30, evict_window=8, mode=mode)
    rows = prompts([64, 45, 20], seed=9)
    alone = [mustafar.generate(model, policy, [p], 5, min_new_tokens=5)[0].tokens for p in rows]
    assert [r.tokens for r in mustafar.generate(model, policy, rows, 5, min_new_tokens=5)] == alone
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    with mustafar.prune(model, policy) as cache, torch.inference_mode():
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0,
            **cache_kwargs(model, cache),
        )  # fmt: skip
    assert out[:, width:].tolist() == alone


# ---------------------------------------------------------------------------------------------------------------
# two modes behind one interface: every policy family, left-padded batches


POLICIES = {
    "k0.7 v0.3": dict(k_sparsity=0.7, v_sparsity=0.3, window=8),
    "v per-channel": dict(k_sparsity=0.5, v_sparsity=0.5, v_direction="channel", window=4),
    "ThinK K": dict(k_sparsity=0.5, k_scorer="think", window=8),
    "output-aware": dict(k_sparsity=0.5, k_scorer="output_aware", v_sparsity=0.6, v_scorer="output_aware"),
    "word": dict(k_sparsity=0.5, v_sparsity=0.75, keep_rule="word", window=8),
    "nm8c K": dict(k_sparsity=0.5, v_sparsity=0.5, k_keep_rule="nm8c", window=8),
    "fp8": dict(k_sparsity=0.5, v_sparsity=0.5, value_dtype="fp8", window=8),
    "snapkv": dict(k_sparsity=0.5, v_sparsity=0.5, evict="snapkv", token_budget=30, evict_window=8, window=8),
    "per-layer": dict(k_layer_sparsity=[0.3, 0.8], v_layer_sparsity=[0.6, 0.0], window=8),
}


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "gemma2"])
def test_compressed_mode_gives_mask_modes_tokens_and_row_statistics_for_every_policy(arch):
    """A left-padded batch (20, 33 and 50 tokens: past every family's sliding window) through `mustafar.generate`:
    compressed mode's tokens and per-row measured sparsity equal mask mode's, and its shortest (most padded) row
    equals that prompt alone, for each policy family."""
    model = family_model(arch)
    batch = prompts([20, 33, 50], seed=5)
    for name, kw in POLICIES.items():
        runs = {
            mode: mustafar.generate(
                model, KVConfig(mode=mode, **kw), batch, max_new_tokens=6, min_new_tokens=6
            )
            for mode in ("mask", "compressed")
        }
        alone = mustafar.generate(model, KVConfig(mode="compressed", **kw), batch[:1], 6, min_new_tokens=6)
        for a, b in zip(runs["mask"], runs["compressed"], strict=True):
            assert a.tokens == b.tokens, name
            assert (a.stats.k_kept, a.stats.k_judged) == (b.stats.k_kept, b.stats.k_judged), name
            assert (a.stats.v_kept, a.stats.v_judged) == (b.stats.v_kept, b.stats.v_judged), name
        assert alone[0].tokens == runs["compressed"][0].tokens, name
        assert alone[0].stats.k_judged == runs["compressed"][0].stats.k_judged, name
        assert any(o.stats.k_kept < o.stats.k_judged for o in runs["mask"]), f"{name} pruned nothing"


@pytest.mark.parametrize("arch", SLIDING[:1] + SLIDING[3:])
def test_compressed_logits_equal_mask_logits_on_a_padded_model_generate(arch):
    """The logits of `model.generate` on a left-padded batch (decode steps on local layers past their window take
    compressed mode's reference path, with the mask)."""
    model = family_model(arch)
    a, b = prompts([44, 26], seed=6)
    ids = torch.tensor([a, [0] * 18 + b])
    mask = torch.ones_like(ids)
    mask[1, :18] = 0
    logits = {}
    for mode in ("mask", "compressed"):
        with mustafar.prune(model, k_sparsity=0.6, v_sparsity=0.6, window=4, mode=mode) as cache:
            out = model.generate(
                ids, attention_mask=mask, past_key_values=cache, max_new_tokens=6, min_new_tokens=6,
                do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
            )  # fmt: skip
        logits[mode] = torch.stack(out.logits)
    torch.testing.assert_close(logits["mask"], logits["compressed"], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# bad input through the Python API: one error naming the bad value, before any model work


def _tiny_head_dim_48():
    sizes = dict(
        vocab_size=VOCAB, hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=48, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(random_config("phi3", sizes)).eval()


@pytest.mark.parametrize(
    ("model", "fields", "message"),
    [
        ("hd48", dict(k_sparsity=0.5, mode="compressed"), "head_dim=48 is not a multiple of 32"),
        ("hd48", dict(k_sparsity=0.5, keep_rule="word"), "the model has head_dim=48, not a multiple of 32"),
        ("phi3", dict(k_sparsity=0.7, keep_rule="nm4"), "kv.k sparsity 0.7 keeps 29 of head_dim=96"),
        ("phi3", dict(k_sparsity=1.0), "kv.k_sparsity=1.0 is outside [0, 1)"),
        ("phi3", dict(v_sparsity=-0.1), "kv.v_sparsity=-0.1 is outside [0, 1)"),
        (
            "phi3",
            dict(k_layer_sparsity=[0.5, 0.5, 0.5]),
            "kv.k_layer_sparsity has 3 entries but the model has 2",
        ),
        ("phi3", dict(k_layer_sparsity=[0.5, 1.5]), "kv.k_layer_sparsity[1]=1.5 is outside [0, 1)"),
        ("phi3", dict(k_sparsity=0.5, sparsity=0.5), "unknown kv key(s) sparsity"),
        ("phi3", dict(k_sparsity=0.5, mode="bitmap"), "kv.mode='bitmap' is not allowed"),
        ("gemma2", dict(k_sparsity=0.5, mode="compressed"), "its attention soft-caps the logits"),
    ],
)
def test_bad_policy_for_a_model_names_the_value_before_the_model_runs(model, fields, message):
    model = _tiny_head_dim_48() if model == "hd48" else family_model(model)
    with pytest.raises(ValueError) as err:
        with mustafar.prune(model, **fields):
            pytest.fail("the block ran")
    assert message in str(err.value)
    assert model.config._attn_implementation != "mustafar"  # refused before the model was touched


def test_unknown_family_is_named():
    with pytest.raises(
        ConfigError, match=r"model.arch='falcon' is not allowed; choose one of llama, mistral"
    ):
        random_config("falcon", {})
