"""Random-weight models at the benchmark architectures (speed does not depend on weight values)."""

from __future__ import annotations

import torch

from mustafar.bench.shapes import ARCHS


def build_model(arch: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """A Llama-family model of `arch` (:data:`ARCHS`) with seeded random weights, SDPA attention, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    torch.manual_seed(0)
    cfg = LlamaConfig(**ARCHS[arch], attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    return model.eval()
