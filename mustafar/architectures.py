"""Model families beyond Llama: the random-weight test model of each, and what compressed mode can run.

A family is a transformers architecture built through its own config class (`AutoConfig.for_model`); no model
file is forked. The tiny model's sizes (`model.architecture`) are shared by every family, and each family adds
the traits that make its attention differ from Llama's: sliding-window layers (Mistral, Phi-3, Gemma-2/3),
attention-logit soft-capping (Gemma-2). q/k norms (Qwen3, Gemma-3) and fused qkv (Phi-3) come with the
architecture itself.
"""

from __future__ import annotations

from typing import Any

from mustafar.config import ConfigError
from mustafar.kernels.support import HEAD_DIMS

# A window short enough that test prompts (tens of tokens) cross it, so sliding-window masks really restrict.
TINY_SLIDING_WINDOW = 16

# model.arch -> the transformers model_type of its text decoder
MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
}
ARCHS = tuple(MODEL_TYPES)


def _alternating(layers: int) -> list[str]:
    """Local and global layers interleaved, global last in each pair (Gemma-3 uses 5 local : 1 global)."""
    return ["full_attention" if i % 2 else "sliding_attention" for i in range(layers)]


def family_traits(arch: str, layers: int) -> dict[str, Any]:
    """The config fields the tiny model of `arch` sets beyond the shared sizes."""
    if arch not in MODEL_TYPES:
        raise ConfigError(f"model.arch={arch!r} is not allowed; choose one of {', '.join(ARCHS)}")
    if arch in ("mistral", "phi3", "gemma2"):  # every layer local (Mistral, Phi-3), or alternating (Gemma-2)
        return {"sliding_window": TINY_SLIDING_WINDOW}
    if arch == "gemma3":  # its default pattern has no global layer among the first five
        return {"sliding_window": TINY_SLIDING_WINDOW, "layer_types": _alternating(layers)}
    return {}


def random_config(arch: str, sizes: dict[str, Any], tokens: dict[str, Any] | None = None):
    """The transformers config of a random `arch` model: shared `sizes`, the family's traits, then `tokens`
    (vocabulary size and special ids of the paired tokenizer)."""
    from transformers import AutoConfig

    traits = family_traits(arch, int(sizes.get("num_hidden_layers", 2)))  # refuses an unknown family
    # transformers keeps any unknown keyword as an attribute nothing reads: a typo would build the default size
    known = set(AutoConfig.for_model(MODEL_TYPES[arch]).to_dict()) | {"head_dim"}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise ConfigError(
            f"model.architecture.{unknown[0]} is not a key of the {MODEL_TYPES[arch]} config (model.arch={arch})"
        )
    return AutoConfig.for_model(MODEL_TYPES[arch], **{**traits, **sizes, **(tokens or {})})


def text_config(config):
    """The decoder's config (multimodal checkpoints such as Gemma-3 nest it under `text_config`)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def family(config) -> str:
    """The `model.arch` name of a model's decoder (its transformers model_type when it is not one of ARCHS)."""
    model_type = text_config(config).model_type
    return next((arch for arch, t in MODEL_TYPES.items() if t == model_type), model_type)


def head_dim(config) -> int:
    c = text_config(config)
    return int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)


# families whose config may carry attn_logit_softcapping that their attention never passes on (Gemma-3 keeps the
# field from Gemma-2's config class; transformers' Gemma3Attention calls the attention without a softcap)
_UNUSED_SOFTCAP = frozenset({"gemma3", "gemma3_text"})


def logit_softcap(config) -> float | None:
    """The soft cap the model's attention applies to its logits, or None (a field its attention ignores counts as
    none)."""
    c = text_config(config)
    cap = getattr(c, "attn_logit_softcapping", None)
    return None if cap is None or c.model_type in _UNUSED_SOFTCAP else cap


def compressed_refusal(config, name: str, device: str) -> str | None:
    """Why `kv.mode=compressed` cannot run model `name` on `device`, or None when it can.

    The sparse decode kernel computes plain softmax(q·k) attention, so soft-capped logits would be silently
    wrong; the bitmap format packs 32-channel words; the Triton kernels exist for HEAD_DIMS only, and on a GPU
    the PyTorch reference path would report reference-path speed as compressed-mode speed.
    """
    softcap = logit_softcap(config)
    if softcap is not None:
        return (
            f"kv.mode=compressed cannot run model {name}: its attention soft-caps the logits "
            f"(attn_logit_softcapping={softcap:g}), which the sparse decode kernel does not apply; use kv.mode=mask"
        )
    d = head_dim(config)
    if d % 32:
        return (
            f"kv.mode=compressed cannot run model {name}: head_dim={d} is not a multiple of 32 "
            f"(the bitmap format's word); use kv.mode=mask"
        )
    if device.startswith("cuda") and d not in HEAD_DIMS:
        return (
            f"kv.mode=compressed on a GPU supports head_dim {', '.join(map(str, HEAD_DIMS))} (the Triton "
            f"kernels); model {name} has head_dim={d}. Use kv.mode=mask, or device=cpu for the PyTorch "
            f"reference path"
        )
    return None
