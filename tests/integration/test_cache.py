"""The pruning cache inside a real transformers model: exactness at sparsity 0, the window schedule, and
decode attention against softmax attention over an explicitly pruned cache (float64, written here)."""

from __future__ import annotations

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


def test_attention_without_attach_fails_clearly(tiny_llama):
    register()
    tiny_llama.set_attn_implementation("mustafar")
    try:
        with pytest.raises(RuntimeError, match="mustafar.attach"):
            tiny_llama(torch.randint(0, 256, (1, 4)))
    finally:
        tiny_llama.set_attn_implementation("sdpa")
