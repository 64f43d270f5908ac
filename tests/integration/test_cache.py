"""The pruning cache inside a real transformers model: exactness at sparsity 0, the window schedule, and
decode attention against softmax attention over an explicitly pruned cache (float64, written here)."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import DynamicCache

from mustafar.attention import attach, mustafar_attention, new_cache, register
from mustafar.cache import MaskedLayer, UnsupportedCacheOperation
from mustafar.config import KVConfig


def greedy(model, ids, n, cache=None):
    kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    if cache is None:
        return model.generate(ids, **kwargs)
    with attach(model, cache):
        return model.generate(ids, past_key_values=cache, **kwargs)


def test_sparsity_zero_reproduces_stock_generation(tiny_llama):
    ids = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(0))
    stock = greedy(tiny_llama, ids, 40)
    for window in (0, 32):
        ours = greedy(tiny_llama, ids, 40, new_cache(tiny_llama, KVConfig(window=window)))
        assert torch.equal(stock, ours)


def test_attach_restores_the_model(tiny_llama):
    before = tiny_llama.config._attn_implementation
    with attach(tiny_llama, new_cache(tiny_llama, KVConfig())):
        assert tiny_llama.config._attn_implementation == "mustafar"
    assert tiny_llama.config._attn_implementation == before
    assert not any(hasattr(m, "_mustafar_layer") for m in tiny_llama.modules())


def test_attach_routes_only_a_multi_part_models_decoder():
    """A vision-language model (Gemma-3's layout, tiny): inside the block only the language part runs mustafar
    attention, so an image prompt still goes through the vision tower's own; after it every part has its own
    implementation back and the logits are the untouched model's. Old behaviour: the vision tower was routed too
    (an image prompt failed) and the language part came back as the top-level implementation (sdpa, not eager)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    import mustafar

    text = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, max_position_embeddings=512, sliding_window=16,
                layer_types=["sliding_attention", "full_attention"])  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)  # fmt: skip
    torch.manual_seed(0)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=299,
                          boi_token_index=297, eoi_token_index=298)  # fmt: skip
    model = Gemma3ForConditionalGeneration(config).eval()
    model.set_attn_implementation({"text_config": "eager", "vision_config": "sdpa"})

    def parts() -> tuple[str, str]:
        return model.config.text_config._attn_implementation, model.config.vision_config._attn_implementation

    ids = torch.randint(1, 290, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    image = torch.cat([ids[:, :10], torch.full((1, 4), 299), ids[:, 10:]], dim=1)
    with mustafar.prune(model, k_sparsity=0.5) as cache:
        assert parts() == ("mustafar", "sdpa")
        model.generate(input_ids=image, pixel_values=torch.randn(1, 3, 28, 28), max_new_tokens=2, do_sample=False,
                       pad_token_id=0, past_key_values=cache)  # fmt: skip
    assert parts() == ("eager", "sdpa")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_declared_pads_must_fit_the_prompt(tiny_llama):
    """`MustafarCache.set_padding` is checked against the prompt it is declared for: a wrong row count failed in a
    reshape; pads that leave a row no real token left it unpruned with negative byte counts (refused where the
    counts are read: a chunked prompt's first chunk may be all pads, as the last case's is)."""
    ids = torch.randint(3, 200, (1, 50))
    cache = new_cache(tiny_llama, KVConfig(k_sparsity=0.5))
    cache.set_padding([0, 0, 0])
    with (
        attach(tiny_llama, cache),
        torch.inference_mode(),
        pytest.raises(ValueError, match="3 pad counts for a batch of 1"),
    ):
        tiny_llama(input_ids=ids, use_cache=True, past_key_values=cache)
    cache = new_cache(tiny_llama, KVConfig(k_sparsity=0.5))
    cache.set_padding([60])
    with attach(tiny_llama, cache), torch.inference_mode():
        tiny_llama(input_ids=ids, use_cache=True, past_key_values=cache)
    with pytest.raises(ValueError, match="60 pad columns for row 0 of a 50-token prompt"):
        cache.stats()
    cache = new_cache(tiny_llama, KVConfig(k_sparsity=0.5, window=4))
    cache.set_padding([30])
    with attach(tiny_llama, cache), torch.inference_mode():
        for chunk in (ids[:, :20], ids[:, 20:40]):  # the first chunk is all pads
            tiny_llama(input_ids=chunk, use_cache=True, past_key_values=cache)
    assert (
        cache.stats().k_judged == (40 - 30 - 4) * 2 * 64 * 2
    )  # real tokens past the window, KV heads, D, layers


def test_compressed_mode_on_a_model_it_cannot_run_is_a_config_error(tiny_llama, monkeypatch):
    """What `mustafar.prune` refuses for the model (here: the kernels' head_dims) is a ConfigError, as the README
    says of bad policies."""
    import mustafar
    from mustafar.config import ConfigError

    monkeypatch.setattr(tiny_llama.config, "head_dim", 48)
    with (
        pytest.raises(ConfigError, match="head_dim"),
        mustafar.prune(tiny_llama, k_sparsity=0.5, mode="compressed"),
    ):
        pass


def reference_pruned(k: torch.Tensor, n_pruned: int, keep: int) -> torch.Tensor:
    """Zero all but the `keep` largest |k| (ties to the lower index) of each of the first n_pruned tokens."""
    out = k.clone()
    b, h, _, d = k.shape
    for bi in range(b):
        for hi in range(h):
            for t in range(n_pruned):
                row = k[bi, hi, t].abs().tolist()
                order = sorted(range(d), key=lambda i: (-row[i], i))
                for i in order[keep:]:
                    out[bi, hi, t, i] = 0
    return out


def test_layer0_cache_equals_explicitly_pruned_stock_cache(tiny_llama):
    """Layer 0's K/V depend only on the tokens, so the stock cache pruned by hand must equal ours."""
    ids = torch.randint(0, 256, (1, 60), generator=torch.Generator().manual_seed(1))
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.7, window=16)
    cache = new_cache(tiny_llama, policy)
    out = greedy(tiny_llama, ids, 10, cache)
    stock = DynamicCache(config=tiny_llama.config)
    with torch.no_grad():
        tiny_llama(out[:, :-1], past_key_values=stock)  # every token that entered the cache
    total = out.shape[1] - 1
    k_ref = reference_pruned(stock.layers[0].keys, total - 16, 32)
    v_ref = reference_pruned(stock.layers[0].values, total - 16, 19)
    torch.testing.assert_close(cache.layers[0].keys, k_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.layers[0].values, v_ref, rtol=1e-5, atol=1e-5)
    assert cache.layers[0].pruners["k"].final == total - 16


class FakeAttention(torch.nn.Module):
    def __init__(self, head_dim: int, n_rep: int):
        super().__init__()
        self.layer_idx, self.head_dim, self.is_causal, self.num_key_value_groups = 0, head_dim, True, n_rep


@pytest.mark.parametrize(
    "policy",
    [KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4), KVConfig(k_sparsity=0.7, v_sparsity=0.3, window=0)],
)
def test_mask_mode_decode_attention_equals_attention_over_pruned_cache(policy):
    register()
    torch.manual_seed(2)
    b, h_kv, n_rep, d, t0, steps = 2, 2, 3, 64, 24, 6
    layer = MaskedLayer(policy)
    module = FakeAttention(d, n_rep)
    module._mustafar_layer = layer
    layer.bound = True  # what `attach` does for a real model
    k_all = torch.randn(b, h_kv, t0 + steps, d)
    v_all = torch.randn(b, h_kv, t0 + steps, d)
    q0 = torch.randn(b, h_kv * n_rep, t0, d)
    k, v = layer.update(k_all[:, :, :t0], v_all[:, :, :t0])
    mustafar_attention(module, q0, k, v, None, scaling=d**-0.5)
    keep_k, keep_v = round(d * (1 - policy.k_sparsity)), round(d * (1 - policy.v_sparsity))
    for step in range(steps):
        t = t0 + step + 1
        q = torch.randn(b, h_kv * n_rep, 1, d)
        k, v = layer.update(k_all[:, :, t - 1 : t], v_all[:, :, t - 1 : t])
        out, _ = mustafar_attention(module, q, k, v, None, scaling=d**-0.5)
        # tokens older than the window (+1: the current step attends over window+1 dense tokens) are pruned
        n_pruned = max(0, t - 1 - policy.window)
        kr = reference_pruned(k_all[:, :, :t], n_pruned, keep_k).double().repeat_interleave(n_rep, 1)
        vr = reference_pruned(v_all[:, :, :t], n_pruned, keep_v).double().repeat_interleave(n_rep, 1)
        p = torch.softmax((q.double() @ kr.transpose(-1, -2)) * d**-0.5, dim=-1)
        want = (p @ vr).transpose(1, 2)
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_unsupported_cache_operations_raise(tiny_llama):
    cache = new_cache(tiny_llama, KVConfig(k_sparsity=0.5))
    ids = torch.randint(0, 256, (1, 8))
    with pytest.raises(UnsupportedCacheOperation, match="beam search"):
        with attach(tiny_llama, cache):
            tiny_llama.generate(ids, past_key_values=cache, num_beams=2, max_new_tokens=2, do_sample=False)


def test_a_second_prompt_into_a_used_cache_warns_and_a_reset_cache_decodes_as_a_fresh_one(tiny_llama):
    """A second `generate` in one block feeds its prompt (transformers slices it by the cached length or not,
    depending on how it is called) after the first generation's tokens: the new prompt would silently attend to
    the old text, so the cache says so. After
    `cache.reset()` the same prompt decodes exactly as in a fresh cache, without the warning."""
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.7, window=8)
    g = torch.Generator().manual_seed(3)
    first, second = torch.randint(0, 256, (1, 40), generator=g), torch.randint(0, 256, (1, 30), generator=g)
    fresh = greedy(tiny_llama, second, 6, new_cache(tiny_llama, policy))
    cache = new_cache(tiny_llama, policy)
    greedy(tiny_llama, first, 6, cache)
    with pytest.warns(UserWarning, match=r"already holds a generation \(45 tokens\)"):
        stale = greedy(tiny_llama, second, 6, cache)
    assert not torch.equal(stale, fresh)  # the old text changed the answer: what the warning is for
    cache.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        again = greedy(tiny_llama, second, 6, cache)
    assert torch.equal(again, fresh)


def test_attention_without_attach_fails_clearly(tiny_llama):
    register()
    tiny_llama.set_attn_implementation("mustafar")
    try:
        with pytest.raises(RuntimeError, match="mustafar.attach"):
            tiny_llama(torch.randint(0, 256, (1, 4)))
    finally:
        tiny_llama.set_attn_implementation("sdpa")
