"""The beyond-the-paper knobs composed: token eviction with per-layer lists, error allocation and the word keep
rule. Each composition must give compressed == mask mode, and every padded row what it gets alone."""

from __future__ import annotations

import pytest
import torch

import mustafar
from mustafar.config import KVConfig

COMPOSED = {
    "evict+allocation": dict(allocation="error"),
    "evict+word": dict(keep_rule="word"),
    # the lists' means are the sides' sparsities (0.7, 0.55)
    "evict+layer lists": dict(k_layer_sparsity=(0.5, 0.9), v_layer_sparsity=(0.3, 0.8)),
}
SPARSITY = {"evict+layer lists": dict(k_sparsity=0.7, v_sparsity=0.55)}


@pytest.mark.parametrize("name", list(COMPOSED))
def test_eviction_composes_with_the_other_knobs(tiny_llama, name):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 256, (n,), generator=g).tolist() for n in (150, 121)]
    tokens = {}
    for mode in ("mask", "compressed"):
        policy = KVConfig(
            evict="snapkv",
            token_budget=80,
            mode=mode,
            **(COMPOSED[name] | SPARSITY.get(name, dict(k_sparsity=0.7, v_sparsity=0.7))),
        )
        batched = mustafar.generate(tiny_llama, policy, prompts, 6)
        alone = [mustafar.generate(tiny_llama, policy, [p], 6)[0] for p in prompts]
        assert [r.tokens for r in batched] == [r.tokens for r in alone], f"{name} {mode}: batch != alone"
        tokens[mode] = [r.tokens for r in batched]
    assert tokens["mask"] == tokens["compressed"]
