"""Llama-family architectures the benchmarks build with random weights (speed does not depend on weight values),
and the attention shape each gives the kernels."""

from __future__ import annotations

from dataclasses import dataclass

ARCHS: dict[str, dict[str, int]] = {  # transformers LlamaConfig fields; vocab trimmed for tiny only
    "llama3_8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        max_position_embeddings=131072,
    ),
    "llama2_7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        head_dim=128,
        vocab_size=32000,
        max_position_embeddings=131072,
    ),
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=512,
        max_position_embeddings=4096,
    ),
}


@dataclass(frozen=True)
class AttentionShape:
    layers: int
    heads_q: int
    heads_kv: int
    head_dim: int


def attention_shape(arch: str) -> AttentionShape:
    """The attention shape of one of :data:`ARCHS`."""
    a = ARCHS[arch]
    return AttentionShape(
        a["num_hidden_layers"], a["num_attention_heads"], a["num_key_value_heads"], a["head_dim"]
    )
