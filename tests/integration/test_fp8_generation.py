"""kv.value_dtype=fp8 inside a real model: compressed mode (fp8 stores) equals mask mode (simulated rounding),
and in both the stored tokens (and only they) lie on the fp8 grid of their token's power-of-two scale."""

from __future__ import annotations

import pytest
import torch

from mustafar.config import KVConfig
from mustafar.formats.fp8 import fake_quantize
from tests.integration.test_compressed_mode import generate

POLICIES = [
    dict(k_sparsity=0.7, v_sparsity=0.7),
    dict(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word"),
    dict(k_sparsity=0.7, k_scorer="output_aware", window=8),  # V dense: its stored tokens are fp8 too
    dict(v_sparsity=0.7, k_layer_sparsity=(0.5, 0.7), evict="snapkv", token_budget=50),
    # layer 1 pruned on neither side: its past-window tokens are stored in fp8, its window stays native
    dict(k_layer_sparsity=(0.7, 0.0), v_layer_sparsity=(0.5, 0.0)),
]
NEW_TOKENS = 12


def run(model, ids, policy):
    return generate(model, ids, policy, NEW_TOKENS)


def on_grid(x: torch.Tensor) -> bool:
    return torch.equal(fake_quantize(x), x)


@pytest.mark.parametrize("kw", POLICIES, ids=lambda kw: KVConfig(value_dtype="fp8", **kw).label())
def test_fp8_compressed_equals_mask_mode(tiny_llama, kw):
    ids = torch.randint(1, 256, (2, 80), generator=torch.Generator().manual_seed(5))
    masked, mcache = run(tiny_llama, ids, KVConfig(value_dtype="fp8", **kw))
    compressed, ccache = run(tiny_llama, ids, KVConfig(value_dtype="fp8", mode="compressed", **kw))
    assert torch.equal(masked.sequences, compressed.sequences)
    for a, b in zip(masked.logits, compressed.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    native, _ = run(tiny_llama, ids, KVConfig(**kw))
    drift = max((a - b).abs().max().item() for a, b in zip(native.logits, masked.logits))
    assert drift > 1e-3  # the rounding is real: it moves the logits well past the modes' agreement
    window = kw.get("window", 32)
    for mlayer, clayer in zip(mcache.layers, ccache.layers):
        stored = clayer.stored
        assert stored > 0 and clayer.keys.shape[2] == window
        ck, cv = clayer.dense_view()
        for m, c in ((mlayer.keys, ck), (mlayer.values, cv)):
            assert on_grid(m[:, :, :stored]) and on_grid(c[:, :, :stored])
            assert not on_grid(m[:, :, stored:])  # the dense window is not rounded
            torch.testing.assert_close(m, c, rtol=1e-4, atol=1e-4)


def test_fp8_bytes_are_measured_from_the_stores(tiny_llama):
    ids = torch.randint(1, 256, (1, 90), generator=torch.Generator().manual_seed(6))
    _, native = run(tiny_llama, ids, KVConfig(k_sparsity=0.7, v_sparsity=0.7, mode="compressed", window=16))
    _, fp8 = run(
        tiny_llama,
        ids,
        KVConfig(k_sparsity=0.7, v_sparsity=0.7, mode="compressed", window=16, value_dtype="fp8"),
    )
    layer = fp8.layers[0]
    stored, tail, h, d = layer.stored, layer.keys.shape[2], 2, 64
    # fp32 model, D = 64, keep 19: bitmap 8 + codes padded to 24 + scale 4 bytes per token-head and side
    per_layer = 2 * stored * h * (8 + 24 + 4) + 2 * tail * h * d * 4
    assert fp8.stats().kv_payload_bytes == per_layer * len(fp8.layers)
    assert fp8.stats().kv_payload_bytes < native.stats().kv_payload_bytes
