"""kv.mode=compressed inside a real model: same greedy tokens and logits as mask mode, and honest bytes."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mustafar.attention import attach, new_cache
from mustafar.config import KVConfig
from mustafar.formats import fixed_token_nbytes

POLICIES = [
    {},
    {"k_sparsity": 0.5, "v_sparsity": 0.5},
    {"k_sparsity": 0.7, "v_sparsity": 0.7},
    {"k_sparsity": 0.5, "k_scorer": "output_aware", "v_sparsity": 0.7, "v_direction": "channel"},
    {"k_sparsity": 0.7, "k_scorer": "think"},
    {
        "k_sparsity": 0.7,
        "k_scorer": "think",
        "v_sparsity": 0.7,
        "v_scorer": "think",
        "keep_rule": "reference",
    },
    {"k_sparsity": 0.5, "v_sparsity": 0.7, "keep_rule": "reference"},
    {"v_sparsity": 0.5, "v_scorer": "output_aware"},
    {"v_sparsity": 0.7, "v_direction": "channel", "v_scorer": "output_aware", "window": 4},
    {
        "k_sparsity": 0.5,
        "v_sparsity": 0.5,
        "v_direction": "channel",
        "v_scorer": "output_aware",
        "keep_rule": "reference",
        "window": 8,
    },
]


def steps_for(kw: dict) -> int:
    """Per-channel policies decode until a generated 32-token group has left the window and been pruned."""
    return 44 if kw.get("v_direction") == "channel" else 24


def generate(model, ids, policy, steps=24):
    cache = new_cache(model, policy)
    with attach(model, cache), torch.inference_mode():
        out = model.generate(
            ids,
            past_key_values=cache,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out, cache


@pytest.mark.parametrize("kw", POLICIES, ids=lambda kw: KVConfig(**kw).label())
def test_compressed_equals_mask_mode(tiny_llama, kw):
    ids = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(3))
    masked, _ = generate(tiny_llama, ids, KVConfig(**kw), steps_for(kw))
    compressed, cache = generate(tiny_llama, ids, KVConfig(mode="compressed", **kw), steps_for(kw))
    assert torch.equal(masked.sequences, compressed.sequences)
    for a, b in zip(masked.logits, compressed.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    if kw.get("v_direction") == "channel":  # a group that started after prefill has been pruned
        v = cache.layers[0].pruners["v"]
        assert v.final - v.group_start >= 32
    if KVConfig(**kw).dense:
        assert cache.layers[0].stored == 0  # a dense policy never builds compressed stores


def test_byte_accounting_matches_the_format(tiny_llama):
    ids = torch.randint(0, 256, (1, 90), generator=torch.Generator().manual_seed(4))
    _, cache = generate(
        tiny_llama, ids, KVConfig(k_sparsity=0.7, v_sparsity=0.5, window=16, mode="compressed"), 10
    )
    stats = cache.stats()
    b, h, d, item = 1, 2, 64, 4
    per_layer = 0
    for layer in cache.layers:
        stored, tail = layer.stored, layer.keys.shape[2]
        assert stored + tail == 99 and tail == 16  # after the last attention only the window is dense
        per_layer = stored * b * h * (fixed_token_nbytes(d, 19, item) + fixed_token_nbytes(d, 32, item))
        per_layer += 2 * tail * b * h * d * item
    assert stats.kv_payload_bytes == per_layer * len(cache.layers)
    assert stats.dense_bytes == 99 * b * h * d * item * 2 * len(cache.layers)
    assert stats.kv_bytes >= stats.kv_payload_bytes


SCRIPT = textwrap.dedent(
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from mustafar.attention import attach, new_cache
    from mustafar.config import KVConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval().to(torch.float16)
    ids = torch.randint(0, 64, (1, 40))
    runs = []
    for mode in ("mask", "compressed"):
        cache = new_cache(model, KVConfig(k_sparsity=0.7, v_sparsity=0.5, window=8, mode=mode))
        with attach(model, cache), torch.inference_mode():
            out = model.generate(ids, past_key_values=cache, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                 pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        runs.append(out)
    (m, c) = runs
    err = max(((a - b).norm() / a.norm()).item() for a, b in zip(m.logits, c.logits))
    print("SAME", torch.equal(m.sequences, c.sequences), "ERR", err)
    """
)


def test_triton_kernels_in_generation_under_the_interpreter():
    """The real compression and decode kernels drive generation (TRITON_INTERPRET=1 on the CPU, fp16)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "MUSTAFAR_KERNEL_BACKEND": "triton"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    words = proc.stdout.split()
    assert words[words.index("SAME") + 1] == "True"
    assert float(words[words.index("ERR") + 1]) < 1e-2


def _mqa_llama(tiny_llama):
    """`tiny_llama` with one layer and one KV head: at batch 1 every (row, head) slice of the tail is contiguous."""
    from transformers import LlamaForCausalLM

    cfg = copy.deepcopy(tiny_llama.config)
    cfg.num_hidden_layers, cfg.num_key_value_heads = 1, 1
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_kv_bytes_are_the_allocated_bytes_with_one_kv_head_at_batch_1(tiny_llama):
    """The tail is what its storage holds: the flush once kept a view of the whole prompt (B·H_kv = 1), so the
    prompt's dense keys and values stayed allocated while kv_bytes counted only the 32 window tokens."""
    import mustafar
    from mustafar.cache_kwarg import cache_kwargs

    model = _mqa_llama(tiny_llama)
    ids = torch.randint(3, 256, (1, 300), generator=torch.Generator().manual_seed(0))
    with (
        mustafar.prune(model, k_sparsity=0.7, v_sparsity=0.7, mode="compressed") as cache,
        torch.inference_mode(),
    ):
        out = model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache))
        for step in range(2):
            layer = cache.layers[0]
            for tail in (layer.keys, layer.values):
                assert tail.untyped_storage().nbytes() == tail.numel() * tail.element_size(), step
            stores = sum(
                t.untyped_storage().nbytes()
                for store in layer.stores.values()
                for t in (store.bits, store.vals, store.__dict__.get("scales"))
                if t is not None
            )
            assert layer.nbytes() == stores + 2 * layer.keys.untyped_storage().nbytes()
            nxt = out.logits[:, -1:].argmax(-1)
            out = model(input_ids=nxt, use_cache=True, **cache_kwargs(model, cache))


def test_compressed_mode_refuses_a_float64_model_naming_the_dtype(tiny_llama):
    import mustafar
    from mustafar.config import ConfigError

    model = _mqa_llama(tiny_llama).double()
    with pytest.raises(ConfigError, match=r"kv.mode=compressed stores .* runs in torch.float64"):
        with mustafar.prune(model, k_sparsity=0.5, mode="compressed"):
            pass


def test_attach_refuses_a_cache_with_more_layers_than_the_model(tiny_llama):
    """A third layer's setting would go unused and unreported: [0.5, 0.5, 0.9] measured 0.5 on two layers."""
    import mustafar
    from mustafar.cache import MustafarCache
    from mustafar.config import KVConfig

    cache = MustafarCache(KVConfig(k_layer_sparsity=[0.5, 0.5, 0.9]), 3)
    with pytest.raises(ValueError, match="cache has 3 layers but the model has 2 attention modules"):
        with mustafar.attach(tiny_llama, cache):
            pass
