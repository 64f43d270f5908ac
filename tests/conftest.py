"""Shared fixtures: everything offline, W&B off, a tiny random Llama with the embedded tokenizer."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter. It must be chosen before anything imports Triton:
# a module imported in compiled mode keeps compiled @jit helpers that the interpreter then cannot call.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer random Llama (GQA 4 q / 2 kv heads, head_dim 64); no tokenizer needed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def triton_interpreter():
    """Run a module's Triton kernels on CPU tensors, also on a GPU machine: Triton binds interpret mode when a
    kernel is decorated, so the kernel modules are (re)imported under it, and again afterwards (compiled kernels
    for the GPU tests that follow in the same session)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    kernel_modules = ("mustafar.kernels.compress", "mustafar.kernels.decode")
    for name in kernel_modules:
        importlib.reload(importlib.import_module(name))
    yield
    mp.undo()
    for name in kernel_modules:
        importlib.reload(importlib.import_module(name))
