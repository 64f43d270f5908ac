"""SnapKV eviction composed with per-token pruning: selection vs a hand reference, evicted tokens really gone,
compressed == mask mode, padded batches == each row alone, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from mustafar.attention import attach, new_cache
from mustafar.cache import MustafarCache
from mustafar.cache_kwarg import cache_kwargs
from mustafar.config import ConfigError, KVConfig
from mustafar.eviction import snapkv_keep
from mustafar.generation import generate
from mustafar.static_cache import StaticMustafarCache, unsupported_reason


def reference_keep(query, key, scaling, budget, window, pool):
    """SnapKV by hand for one unpadded row: loops over heads, queries and tokens (float64)."""
    h_q, q_len, _ = query.shape
    h_kv, t, _ = key.shape
    group = h_q // h_kv
    kept = []
    for h in range(h_kv):
        score = [0.0] * t
        for g in range(group):
            for i in range(window):
                row = t - window + i  # the query's own column
                q = query[h * group + g, q_len - window + i].double()
                logits = [float(q @ key[h, j].double()) * scaling for j in range(row + 1)]
                top = max(logits)
                z = sum(math.exp(x - top) for x in logits)
                for j in range(row + 1):
                    score[j] += math.exp(logits[j] - top) / z
        prefix = t - window
        pooled = [max(score[max(0, j - pool // 2) : min(prefix, j + pool // 2 + 1)]) for j in range(prefix)]
        order = sorted(range(prefix), key=lambda j: (-pooled[j], j))[: budget - window]
        kept.append(sorted(order) + list(range(prefix, t)))
    return kept


@pytest.mark.parametrize("pool", [1, 7])
def test_snapkv_selection_equals_a_hand_reference(pool):
    torch.manual_seed(1)
    h_q, h_kv, t, d, budget, window = 4, 2, 40, 16, 20, 6
    query, key = torch.randn(1, h_q, t, d), torch.randn(1, h_kv, t, d)
    policy = KVConfig(evict="snapkv", token_budget=budget, evict_window=window, evict_pool=pool)
    got = snapkv_keep(query, key, d**-0.5, policy, [0])[0]
    assert got.tolist() == reference_keep(query[0], key[0], d**-0.5, budget, window, pool)


def test_padding_never_enters_the_scores():
    torch.manual_seed(2)
    h, t, d, pad = 2, 30, 8, 5
    query, key = torch.randn(1, h, t, d), torch.randn(1, h, t, d)
    policy = KVConfig(evict="snapkv", token_budget=12, evict_window=4)
    alone = snapkv_keep(query, key, 0.3, policy, [0])[0]
    padded_q = torch.cat([torch.randn(1, h, pad, d) * 9, query], dim=2)
    padded_k = torch.cat([torch.randn(1, h, pad, d) * 9, key], dim=2)
    assert (snapkv_keep(padded_q, padded_k, 0.3, policy, [pad])[0] - pad).tolist() == alone.tolist()
    short = snapkv_keep(query, key, 0.3, KVConfig(evict="snapkv", token_budget=t, evict_window=4), [0])[0]
    assert short.tolist() == [list(range(t))] * h  # a prompt within the budget is untouched


def _prefill(model, policy, ids):
    cache = new_cache(model, policy)
    with attach(model, cache), torch.inference_mode():
        model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache))
    return cache


def test_evicted_tokens_are_absent_from_attention(tiny_llama):
    """The decode step's attention equals softmax attention over the kept tokens only, computed by hand."""
    torch.manual_seed(3)
    ids = torch.randint(0, 256, (1, 60))
    policy = KVConfig(evict="snapkv", token_budget=24, evict_window=8)
    full = _prefill(tiny_llama, KVConfig(), ids)  # the unevicted cache: the reference's source
    cache = _prefill(tiny_llama, policy, ids)
    layer, dense = cache.layers[0], full.layers[0]
    assert layer.keys.shape[2] == 24 and layer.evicted == [36]
    # which tokens survived, recovered from the dense cache (RoPE'd keys keep their position)
    kept = [[int((dense.keys[0, h] == k).all(-1).nonzero()) for k in layer.keys[0, h]] for h in range(2)]
    assert all(row == sorted(row) and row[-8:] == list(range(52, 60)) for row in kept)
    attn = tiny_llama.model.layers[0].self_attn
    seen, captured = {}, {}

    def keep_output(module, args, kwargs, out):
        seen["out"] = out[0]

    def grab(module, args, kwargs):
        captured["hidden"] = kwargs["hidden_states"]

    hook = attn.register_forward_hook(keep_output, with_kwargs=True)

    pre = attn.register_forward_pre_hook(grab, with_kwargs=True)
    with attach(tiny_llama, cache), torch.inference_mode():
        tiny_llama(
            input_ids=torch.tensor([[7]]),
            position_ids=torch.tensor([[60]]),
            cache_position=torch.tensor([24]),
            use_cache=True,
            **cache_kwargs(tiny_llama, cache),
        )
    hook.remove()
    pre.remove()
    # by hand: q/k/v of the new token, RoPE at position 60, softmax over kept tokens + itself
    with torch.inference_mode():
        _by_hand(tiny_llama, attn, captured["hidden"], dense, kept, seen["out"])


def _by_hand(tiny_llama, attn, hidden, dense, kept, got):
    q = attn.q_proj(hidden).view(1, 1, 4, 64).transpose(1, 2)
    k = attn.k_proj(hidden).view(1, 1, 2, 64).transpose(1, 2)
    v = attn.v_proj(hidden).view(1, 1, 2, 64).transpose(1, 2)
    cos, sin = tiny_llama.model.rotary_emb(v, torch.tensor([[60]]))
    rot = lambda x: torch.cat([-x[..., 32:], x[..., :32]], dim=-1)  # noqa: E731
    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    outs = []
    for hq in range(4):
        h = hq // 2
        keys = torch.cat([dense.keys[0, h, kept[h]], k[0, h]])
        vals = torch.cat([dense.values[0, h, kept[h]], v[0, h]])
        w = torch.softmax(q[0, hq] @ keys.T / 8.0, dim=-1)
        outs.append(w @ vals)
    expected = attn.o_proj(torch.cat(outs, dim=-1).view(1, 1, 256))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_compressed_equals_mask_mode_with_eviction_and_pruning(tiny_llama, monkeypatch):
    monkeypatch.setenv("MUSTAFAR_KERNEL_BACKEND", "torch")
    torch.manual_seed(4)
    prompts = [torch.randint(0, 256, (70,)).tolist()]
    base = dict(k_sparsity=0.5, v_sparsity=0.5, window=8, evict="snapkv", token_budget=40, evict_window=16)
    outs = {}
    for mode in ("mask", "compressed"):
        cache = new_cache(tiny_llama, KVConfig(mode=mode, **base))
        outs[mode] = generate(tiny_llama, KVConfig(mode=mode, **base), prompts, 12, cache=cache)[0]
        assert all(layer.get_seq_length() == 40 + 11 for layer in cache.layers)
        outs[mode + "_cache"] = cache
    assert outs["mask"].tokens == outs["compressed"].tokens
    m, c = outs["mask"].stats, outs["compressed"].stats
    assert (m.k_kept, m.k_judged, m.v_kept) == (c.k_kept, c.k_judged, c.v_kept)
    assert m.evicted_bytes == c.evicted_bytes == 2 * 30 * 2 * 64 * 4 * 2  # layers·tokens·heads·D·fp32·(K,V)
    comp = outs["compressed_cache"]
    for lm, lc in zip(outs["mask_cache"].layers, comp.layers):
        for a, b in zip(lm.dense_view(), lc.dense_view()):
            torch.testing.assert_close(a, b)
    assert comp.layers[0].stores["k"].length == 40 + 11 - 8  # only survivors are stored
    # real memory: the store holds budget + decoded tokens, not the prompt
    plain = new_cache(tiny_llama, KVConfig(mode="compressed", k_sparsity=0.5, v_sparsity=0.5, window=8))
    generate(tiny_llama, plain.policy, prompts, 12, cache=plain)
    assert comp.stats().kv_payload_bytes < plain.stats().kv_payload_bytes * 0.75


@pytest.mark.parametrize("mode", ["mask", "compressed"])
def test_padded_batch_equals_each_row_alone(tiny_llama, monkeypatch, mode):
    monkeypatch.setenv("MUSTAFAR_KERNEL_BACKEND", "torch")
    torch.manual_seed(5)
    policy = KVConfig(
        mode=mode, k_sparsity=0.5, v_sparsity=0.5, window=8, evict="snapkv", token_budget=30, evict_window=8
    )
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (64, 45, 20)]  # the last is within the budget
    batch = generate(tiny_llama, policy, prompts, 6)
    for p, out in zip(prompts, batch):
        alone = generate(tiny_llama, policy, [p], 6)[0]
        assert out.tokens == alone.tokens
        assert (out.stats.k_kept, out.stats.k_judged, out.stats.evicted_bytes) == (
            alone.stats.k_kept,
            alone.stats.k_judged,
            alone.stats.evicted_bytes,
        )
        assert out.stats.dense_bytes == alone.stats.dense_bytes
    assert batch[2].stats.evicted_bytes == 0


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(evict="h2o"), "kv.evict='h2o'"),
        (dict(evict="snapkv", token_budget=32), "kv.token_budget=32"),
        (dict(evict="snapkv", token_budget=10, evict_window=16), "kv.token_budget=10"),
        (dict(evict="snapkv", token_budget=0), "kv.token_budget=0 must be an integer > kv.evict_window=32"),
        (dict(evict="snapkv", token_budget=64, evict_window=0), "kv.evict_window=0"),
        (dict(evict="snapkv", token_budget=64, evict_pool=4), "kv.evict_pool=4"),
        (dict(evict="snapkv", token_budget=64, v_sparsity=0.5, v_direction="channel"), "kv.v_direction"),
        (dict(evict="snapkv", token_budget=64, k_sparsity=0.5, k_scorer="think"), "kv.k_scorer='think'"),
    ],
)
def test_bad_config_values_are_named(fields, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
        KVConfig(**fields)


def test_job_ids_of_non_evicting_policies_do_not_change():
    assert (
        KVConfig(k_sparsity=0.5).to_dict() == KVConfig(k_sparsity=0.5, evict_window=9, evict_pool=3).to_dict()
    )
    with pytest.raises(ConfigError, match="kv.token_budget=99 needs kv.evict=snapkv"):
        KVConfig(k_sparsity=0.5, token_budget=99)  # a budget alone would silently evict nothing
    assert "evict" not in KVConfig().to_dict()
    assert KVConfig(evict="snapkv", token_budget=64).to_dict()["token_budget"] == 64
    assert KVConfig(evict="snapkv", token_budget=64, k_sparsity=0.5).label() == "snapkv64 K0.5"


def test_a_chunked_prompt_is_refused_not_evicted_twice(tiny_llama):
    """The first call is scored and evicted alone (the window is its last queries); a second prompt chunk would
    then be kept whole, another policy than the config's: refused, naming the count. Decode steps go on."""
    ids = torch.randint(3, 256, (1, 60), generator=torch.Generator().manual_seed(1))
    cache = _prefill(tiny_llama, KVConfig(evict="snapkv", token_budget=24, evict_window=8), ids[:, :40])
    assert cache.layers[0].get_seq_length() == 24
    with attach(tiny_llama, cache), torch.inference_mode():
        with pytest.raises(ValueError, match="20 more prompt tokens"):
            tiny_llama(input_ids=ids[:, 40:], use_cache=True, **cache_kwargs(tiny_llama, cache))


def test_static_caches_decline_eviction():
    policy = KVConfig(evict="snapkv", token_budget=64)
    assert "kv.evict=snapkv" in unsupported_reason(policy, 1000)
    with pytest.raises(ValueError, match="kv.evict"):
        StaticMustafarCache(policy, 2, 128, 64)
    assert isinstance(MustafarCache(policy, 2), MustafarCache)


def test_hf_generate_evicts_like_mustafar_generate(tiny_llama):
    """`model.generate` (one unpadded prompt) gives `mustafar.generate`'s tokens: positions continue the prompt."""
    import mustafar

    torch.manual_seed(6)
    prompt = torch.randint(0, 256, (1, 70))
    policy = KVConfig(
        k_sparsity=0.5, v_sparsity=0.5, window=8, evict="snapkv", token_budget=40, evict_window=16
    )
    ours = generate(tiny_llama, policy, [prompt[0].tolist()], 10)[0].tokens
    with mustafar.prune(tiny_llama, policy) as cache:
        out = tiny_llama.generate(
            prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, **cache_kwargs(tiny_llama, cache)
        )
    assert out[0, 70:].tolist() == ours
    assert cache.layers[0].get_seq_length() == 40 + 9


@pytest.mark.parametrize("mode", ["mask", "compressed"])
def test_hf_generate_of_a_padded_batch_evicts_like_mustafar_generate(tiny_llama, monkeypatch, mode):
    """`model.generate` of a left-padded batch gives each row `mustafar.generate`'s tokens for that row alone.
    Eviction right-aligns each row's survivors, so its pads change; transformers keeps masking the prompt's
    pads. Old behaviour: rows 1 and 2 attended to the wrong columns from the first decode step."""
    import mustafar

    monkeypatch.setenv("MUSTAFAR_KERNEL_BACKEND", "torch")
    torch.manual_seed(8)
    policy = KVConfig(
        mode=mode, k_sparsity=0.5, v_sparsity=0.5, window=8, evict="snapkv", token_budget=30, evict_window=8
    )
    prompts = [torch.randint(3, 256, (n,)).tolist() for n in (64, 45, 20)]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with mustafar.prune(tiny_llama, policy) as cache:
        out = tiny_llama.generate(
            ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0,
            **cache_kwargs(tiny_llama, cache),
        )  # fmt: skip
    for row, p in enumerate(prompts):
        assert out[row, width:].tolist() == generate(tiny_llama, policy, [p], 6, min_new_tokens=6)[0].tokens


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: the Triton prune+pack and decode kernels"
)
def test_compressed_equals_mask_mode_with_eviction_on_the_gpu(tiny_llama):
    """The real kernels read stores that hold only survivors (fp16, padded batch)."""
    model = tiny_llama.to("cuda", torch.float16)
    try:
        torch.manual_seed(7)
        prompts = [torch.randint(0, 256, (n,)).tolist() for n in (200, 150)]
        base = dict(k_sparsity=0.5, v_sparsity=0.5, evict="snapkv", token_budget=96)
        mask = generate(model, KVConfig(mode="mask", **base), prompts, 16, static=False)
        comp = generate(model, KVConfig(mode="compressed", **base), prompts, 16, static=False)
        for m, c in zip(mask, comp):
            assert m.tokens == c.tokens
            assert (m.stats.k_kept, m.stats.evicted_bytes) == (c.stats.k_kept, c.stats.evicted_bytes)
    finally:
        tiny_llama.to("cpu", torch.float32)
