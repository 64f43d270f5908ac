"""The attention function registered with transformers, and `attach`, which wires a cache into a model.

The model's attention modules call `mustafar_attention` (registered under ATTN_NAME) with the K/V the cache's
`update` returned. It computes attention (dense SDPA in mask mode; the sparse decode kernel over the compressed
stores in compressed mode), then lets the bound cache layer score and prune: pruning happens after a step's
attention, as in the paper. transformers never passes the cache to attention functions, hence the binding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mustafar.architectures import compressed_refusal, head_dim, text_config
from mustafar.cache import (
    CompressedLayer,
    MustafarCache,
    MustafarLayer,
    calibrated,
    kernel_backend,
    nm_group,
    nm_strided,
    word_quota,
)
from mustafar.config import CHANNEL_GROUP, ConfigError, KVConfig
from mustafar.formats.bitmap import SUPPORTED_DTYPES as STORE_DTYPES
from mustafar.pruning import Observation, exact_keep, scores
from mustafar.pruning.keep import nm_whole_sparsities, reference_think_keep, reference_topk_keep
from mustafar.static_cache import StaticLayer

ATTN_NAME = "mustafar"
_BOUND = "_mustafar_layer"


def register() -> None:
    """Idempotent, explicit registration (never at import time: registries are process-global)."""
    AttentionInterface.register(ATTN_NAME, mustafar_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def _layer_of(module: torch.nn.Module) -> MustafarLayer:
    layer = getattr(module, _BOUND, None)
    if layer is None:
        raise RuntimeError(
            f"attention '{ATTN_NAME}' ran without a bound cache layer: generate inside `mustafar.attach(model, cache)`"
        )
    if not layer.is_initialized:
        raise RuntimeError(
            "the attached cache was not updated: pass it to the model as `past_key_values=cache`"
        )
    return layer


def _needs_mask(mask: torch.Tensor | None) -> bool:
    return mask is not None and not (mask.dtype == torch.bool and bool(mask.all()))


def mustafar_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    layer = _layer_of(module)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    softcap = _family_kwargs(**kwargs)
    if layer.survivor_cols is not None:  # eviction compacted the cache: transformers' mask no longer fits it
        attention_mask = evicted_mask(layer, query.shape[1], query.shape[2], kwargs.get("sliding_window"))
    if isinstance(layer, StaticLayer):  # fixed-shape decode step over preallocated storage
        out = layer.attend(module, query, key, value, attention_mask, dropout, scaling)
    elif isinstance(layer, CompressedLayer) and layer.stored > 0:
        if query.shape[2] == 1 and not _needs_mask(attention_mask):
            from mustafar.kernels import sparse_decode_attention

            out = sparse_decode_attention(
                query[:, :, 0],
                layer.stores["k"],
                layer.stores["v"],
                key,
                value,
                scale=scaling,
                backend=kernel_backend(),
            ).unsqueeze(1)
        else:  # several queries meet compressed tokens (chunked prompt, padding): the reference path
            full_k, full_v = layer.dense_view()
            out, _ = sdpa_attention_forward(module, query, full_k, full_v, attention_mask, dropout, scaling)
    elif softcap is not None:
        out = softcapped_attention(query, key, value, attention_mask, scaling, softcap)
    else:
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling)
    if layer.pads is None and not layer.pruned_any and attention_mask is not None and query.shape[2] > 1:
        pads = _left_pads(
            attention_mask
        )  # a left-padded prompt from `model.generate`: prune rows as if alone
        if any(pads):
            layer.set_padding(pads, query.device)
    obs = _observe(layer, query, key, attention_mask, scaling, softcap)
    if layer.policy.evict != "none":
        layer.evict(query, scaling, softcap, obs)
    layer.after_attention(obs)
    return out, None


def evicted_mask(layer: MustafarLayer, heads_q: int, q_len: int, window: int | None) -> torch.Tensor | None:
    """The attention mask of the last ``q_len`` cached columns once eviction compacted the cache, boolean
    [B, 1 or H_q, q_len, T]: each row's columns from its pads on (eviction right-aligned the survivors, so a row's
    pads changed), causal, and on a sliding-window layer only survivors whose column before eviction lies within
    ``window`` of the query's (each KV head kept its own survivors: one mask per head).

    transformers builds the decode mask from the prompt's padding and counts the window in cache columns; both
    moved with the survivors. ``mustafar.generate`` hands it the compacted padding, ``model.generate`` does not,
    so the mask is rebuilt here from what the layer recorded, the same for either. None where a decode step sees
    every column (no pads, no window): the sparse decode kernel then runs without a mask and without a sync."""
    cols = layer.survivor_cols  # [B, H_kv, n]
    b, h_kv, n = cols.shape
    padded = layer.pads is not None and any(layer.pads)
    if q_len == 1 and not padded and not window:
        return None
    t = layer.get_seq_length()
    col = torch.arange(t, device=cols.device)
    query = col[t - q_len :]
    visible = col.view(1, 1, 1, t) <= query.view(1, 1, q_len, 1)
    if padded:
        visible = visible & (col.view(1, 1, 1, t) >= layer.pad_columns.view(b, 1, 1, 1))
    if not window:
        return visible
    later = col[n:].view(1, 1, -1).expand(b, h_kv, -1)
    before = torch.cat([cols, later + layer.evict_shift], dim=-1)  # [B, H_kv, T] columns before eviction
    inside = (query + layer.evict_shift).view(1, 1, q_len, 1) - before.unsqueeze(2) < window
    return (visible & inside).repeat_interleave(heads_q // h_kv, dim=1)


def _left_pads(mask: torch.Tensor) -> list[int]:
    """Leading columns no query of a row may see (boolean or additive [B, 1|H, q, T] mask of a prompt).

    Not the last query's row alone: on a sliding-window layer it hides every column older than the window, which
    are the row's tokens all the same (each real query sees itself). A row that sees every column is a pad query
    whose fully masked row was unmasked, or a causal row that sees no pads: it says nothing about them."""
    rows = mask[:, 0]
    visible = rows if rows.dtype == torch.bool else rows == 0
    visible = visible & ~visible.all(dim=-1, keepdim=True)
    return visible.any(dim=1).int().argmax(dim=-1).tolist()  # the first column some query sees


def _family_kwargs(
    sliding_window: int | None = None, softcap: float | None = None, s_aux=None, **_
) -> float | None:
    """The per-family extras transformers passes; returns the logit soft-cap (Gemma-2) or None.

    A sliding window needs nothing here: the layer's mask (built by transformers from the model config) already
    hides the tokens outside it, and those tokens stay in the cache and are pruned like any other.
    """
    if s_aux is not None:
        raise NotImplementedError(
            "attention sinks (s_aux, e.g. gpt-oss) are not supported by mustafar attention"
        )
    return softcap


def softcapped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float,
) -> torch.Tensor:
    """Eager attention with soft-capped logits, softcap·tanh(q·k·scaling / softcap) (Gemma-2): SDPA cannot cap.

    `mask` is boolean (True = attend) or additive; None means causal over the last q_len of the keys.
    Returns [B, q_len, H_q, D] like transformers' attention functions.
    """
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)
    v = value.repeat_interleave(groups, dim=1)
    logits = torch.matmul(query, k.transpose(2, 3)) * scaling
    logits = softcap * torch.tanh(logits / softcap)
    q_len, t = query.shape[2], key.shape[2]
    if mask is None and q_len > 1:
        mask = torch.ones(q_len, t, dtype=torch.bool, device=query.device).tril(t - q_len)
    if mask is not None:
        mask = mask[..., :t]
        hidden = torch.finfo(
            logits.dtype
        ).min  # not -inf: a fully masked (padding) row stays finite, as in eager
        logits = logits.masked_fill(~mask, hidden) if mask.dtype == torch.bool else logits + mask
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, v).transpose(1, 2).contiguous()


def _observe(
    layer: MustafarLayer,
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None,
) -> Observation:
    n_kv = key.shape[1]
    obs = Observation(q_len=query.shape[2])
    needs = layer.needs
    if not needs:
        return obs
    real = None
    if layer.pads is not None and query.shape[2] > 1:  # left padding: a row's statistics use its real queries
        real = scores.real_queries(query.shape[2], layer.get_seq_length(), layer.pad_columns)
    if "query" in needs:
        obs.query_stat = scores.query_stat(query, n_kv, real)
    if "think_query" in needs:
        obs.think_query_stat = scores.think_query_stat(query, n_kv, real)
    if "attention" in needs:
        keys = layer.dense_view()[0] if isinstance(layer, CompressedLayer) else key
        obs.attention_stat = scores.attention_stat(query, keys, scaling, mask, real, softcap)
    return obs


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules of a decoder, found by their `layer_idx` (any Llama-family model)."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "head_dim")]
    if not mods:
        raise ValueError(
            f"{type(model).__name__} has no attention modules with a layer_idx; not a supported decoder"
        )
    return mods


def new_cache(model: torch.nn.Module, policy) -> MustafarCache:
    return MustafarCache(policy, num_layers=text_config(model.config).num_hidden_layers)


def check_keep_rules(policy: KVConfig, d: int) -> None:
    """Refuse a side whose keep rule does not fit head dim ``d``: `word` needs whole 32-channel words, an N:M rule
    a whole count per group at every sparsity of that side. Called when a cache is bound to a model (before any
    token is pruned) and by a job before it loads its model (the head dim read from the model's config)."""
    for side in ("k", "v"):
        _check_keeps_one(policy, side, d)
        rule, key = policy.side_keep_rule(side), policy.keep_rule_key(side)
        if rule == "word" and d % 32:
            raise ConfigError(
                f"{key}='word' splits each token into 32-channel words, but the model has head_dim={d}, not a "
                f"multiple of 32; use {key.removeprefix('kv.')}=exact"
            )
        group = nm_group(policy, side)
        if not group:
            continue
        for s in getattr(policy, f"{side}_layer_sparsity") or (getattr(policy, side).sparsity,):
            keep = exact_keep(d, s)
            if s > 0 and (d % group or (keep * group) % d):
                raise ConfigError(
                    f"{key}={rule!r} keeps the same count in every {group}-channel group, but "
                    f"kv.{side} sparsity {s:g} keeps {keep} of head_dim={d} ({keep * group / d:g} per group); "
                    f"sparsities with whole groups: {nm_whole_sparsities(group)}"
                )


def _check_keeps_one(policy: KVConfig, side: str, d: int) -> None:
    """Refuse a sparsity so close to 1 that its rule keeps nothing of what it ranks (a token's head_dim entries,
    ThinK's channels, a channel's 32-token group): mask mode would zero the side whole, compressed mode cannot
    store a token."""
    rule, keep_rule = getattr(policy, side), policy.side_keep_rule(side)
    if not rule.active or (keep_rule == "reference" and rule.scorer == "magnitude"):
        return  # the published magnitude threshold keeps n - int(s·n) + 1 >= 2 entries at any s < 1
    per_channel = rule.direction == "channel" and rule.scorer != "think"
    n = CHANNEL_GROUP if per_channel else d
    if keep_rule == "reference":
        count, largest = (
            (reference_think_keep, 1.0) if rule.scorer == "think" else (reference_topk_keep, 1 - 1 / n)
        )
    else:
        count, largest = exact_keep, 1 - 0.5 / n
    unit = f"each channel's {n}-token group" if per_channel else f"head_dim={d}"
    layers = getattr(policy, f"{side}_layer_sparsity")
    for i, s in enumerate(layers or (rule.sparsity,)):
        if count(n, s) < 1:
            key = f"kv.{side}_layer_sparsity[{i}]" if layers else f"kv.{side}_sparsity"
            raise ConfigError(
                f"{key}={s:g} keeps {count(n, s)} of {unit} under {policy.keep_rule_key(side)}="
                f"{keep_rule!r}: nothing would be kept; use a sparsity of at most {math.floor(largest * 1e4) / 1e4:g}"
            )


def _check_store_orders(policy: KVConfig, model: torch.nn.Module) -> None:
    """Refuse, before prefill, compressed strided N:M sides that the Triton decoders cannot read in their stored
    order (the same check the decode call makes, on stores shaped as the caches will make them): only keys kept
    four of every eight strided channels at s 0.5 with values kept two of every four are read that way, and the
    same keys under a calibrated per-head order (set on these stores as the prefill will set it)."""
    from mustafar.formats import CompressedStore
    from mustafar.kernels.dispatch import _check_store_order, decoder_for, resolve_backend

    ordered = any(calibrated(policy, side) or nm_strided(policy, side) for side in ("k", "v"))
    if policy.mode != "compressed" or not ordered:
        return
    d, cfg = head_dim(model.config), text_config(model.config)
    if resolve_backend(kernel_backend(), model.device, d) != "triton":
        return  # the PyTorch path decodes through to_dense, in channel order
    n_rep = cfg.num_attention_heads // getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    n = max(len(policy.k_layer_sparsity), len(policy.v_layer_sparsity), 1)
    ks = policy.k_layer_sparsity or (policy.k_sparsity,) * n
    vs = policy.v_layer_sparsity or (policy.v_sparsity,) * n
    for k_s, v_s in set(zip(ks, vs)):
        k, v = (
            CompressedStore(
                1,
                1,
                d,
                model.dtype,
                "cpu",
                exact_keep(d, s) if s else d,
                word_quota=word_quota(policy, side),
                nm_group=nm_group(policy, side),
                nm_strided=nm_strided(policy, side),
                value_dtype=policy.value_dtype,
            )  # fmt: skip
            for side, s in (("k", k_s), ("v", v_s))
        )
        for side, store in (("k", k), ("v", v)):
            if calibrated(policy, side):
                store.set_head_order(torch.arange(d).expand(1, 1, d), checked=False)
        q = torch.zeros(1, n_rep, d, dtype=model.dtype, device=model.device)
        _check_store_order(k, v, decoder_for(q, k, v))


def _routing(config, decoder_config) -> tuple[str | dict, str | dict]:
    """(what routes the decoder's attention through mustafar, what restores every implementation after).

    A plain decoder's config is the model's own: one name for both. A multi-part model (e.g. Gemma-3's vision and
    language parts) keeps its other parts on their own implementations (a vision tower routed here would fail on an
    image prompt), so only the sub-config the decoder reads is named, and each part's implementation is restored."""
    if decoder_config is config or not getattr(config, "sub_configs", None):
        return ATTN_NAME, config._attn_implementation

    def current(cfg) -> str | dict:
        subs = {key: current(sub) for key in cfg.sub_configs if (sub := getattr(cfg, key, None)) is not None}
        return {"": cfg._attn_implementation, **subs} if subs else cfg._attn_implementation

    def path_to(cfg) -> dict | None:
        for key in cfg.sub_configs:
            sub = getattr(cfg, key, None)
            if sub is decoder_config:
                return {key: ATTN_NAME}
            if sub is not None and getattr(sub, "sub_configs", None) and (inner := path_to(sub)) is not None:
                return {key: inner}
        return None

    route = path_to(config)
    return (ATTN_NAME if route is None else route), current(config)


@contextmanager
def attach(model: torch.nn.Module, cache: MustafarCache) -> Iterator[MustafarCache]:
    """Route the model's attention through mustafar and bind each layer of `cache` for the duration."""
    register()
    if cache.policy.mode == "compressed":
        refusal = compressed_refusal(model.config, type(model).__name__, str(model.device))
        if refusal:
            raise ConfigError(refusal)
        if model.dtype not in STORE_DTYPES:
            raise ConfigError(
                f"kv.mode=compressed stores float16, bfloat16 or float32 caches; {type(model).__name__} runs in "
                f"{model.dtype}: cast the model, or use kv.mode=mask"
            )
    check_keep_rules(cache.policy, head_dim(model.config))
    _check_store_orders(cache.policy, model)
    modules = attention_modules(model)
    route, previous = _routing(model.config, getattr(modules[0], "config", model.config))
    if len(cache.layers) != len(modules):  # more layers would leave per-layer settings unused, unchecked
        raise ValueError(
            f"cache has {len(cache.layers)} layers but the model has {len(modules)} attention modules"
        )
    outer = {m: getattr(m, _BOUND, None) for m in modules}  # an enclosing attach's layers (nested blocks)
    model.set_attn_implementation(route)
    for m in modules:
        if outer[m] is not None:
            outer[m].bound = False
        setattr(m, _BOUND, cache.layers[m.layer_idx])
        cache.layers[m.layer_idx].bound = True
    try:
        yield cache
    finally:
        for m in modules:
            getattr(m, _BOUND).bound = False
            if outer[m] is None:
                delattr(m, _BOUND)
            else:  # give the enclosing block its binding back
                setattr(m, _BOUND, outer[m])
                outer[m].bound = True
        model.set_attn_implementation(previous)
