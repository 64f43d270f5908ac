"""Per-entry importance scores (docs/method.md §2), computed on one KV head's tensors [B, H_kv, T, D].

Output-aware scores need what the attention saw: `query_stat` summarises the queries of a GQA group per channel,
`attention_stat` the attention each cached token received. Both are produced in `mustafar.attention` and averaged
over the decode steps a token spends in the window (docs/method.md §3) by the cache.
"""

from __future__ import annotations

import torch

OBSERVED_QUERIES = 32  # prompt tokens are scored from the last 32 prompt queries


def group_queries(query: torch.Tensor, n_kv: int) -> torch.Tensor:
    """[B, H_q, q, D] -> [B, H_kv, n_rep, q, D] (query head h belongs to KV head h // n_rep)."""
    b, h_q, q, d = query.shape
    return query.view(b, n_kv, h_q // n_kv, q, d)


def real_queries(q_len: int, total: int, pads: torch.Tensor) -> torch.Tensor:
    """[B, m] weights (1 real, 0 pad) of the last m = min(32, q_len) queries of a left-padded batch whose
    queries are the last q_len of `total` columns: a row's statistic then averages its own queries only."""
    m = min(OBSERVED_QUERIES, q_len)
    columns = torch.arange(total - m, total, device=pads.device)
    return (columns.unsqueeze(0) >= pads.unsqueeze(1)).float()


def _query_mean(x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Mean over the query axis (3) of grouped [B, H_kv, n_rep, m, ...], over real queries only if given."""
    if real is None:
        return x.mean(dim=3)
    w = real.view(real.shape[0], 1, 1, real.shape[1], *([1] * (x.dim() - 4)))
    return (x * w).sum(dim=3) / w.sum(dim=3)


def query_stat(query: torch.Tensor, n_kv: int, real: torch.Tensor | None = None) -> torch.Tensor:
    """q̄_d: mean over the last 32 queries of |q_d|, summed over the group's query heads -> [B, H_kv, D].
    `real` ([B, m], see `real_queries`) leaves pad queries out."""
    q = group_queries(query[:, :, -OBSERVED_QUERIES:].float(), n_kv)
    return _query_mean(q.abs(), real).sum(dim=2)


def think_query_stat(query: torch.Tensor, n_kv: int, real: torch.Tensor | None = None) -> torch.Tensor:
    """ThinK's query factor: mean over the last 32 queries of q², averaged over the group -> [B, H_kv, D]."""
    q = group_queries(query[:, :, -OBSERVED_QUERIES:].float(), n_kv)
    return _query_mean(q.square(), real).mean(dim=2)


def attention_stat(
    query: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    mask: torch.Tensor | None,
    real: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """a_t: attention weight of each cached token from the last 32 queries, mean over queries, summed over the
    group's query heads -> [B, H_kv, T]. `mask` is the model's boolean or additive [B, 1|H, q, T] mask; None
    means plain causal attention (the queries are the last q_len of the T tokens). `softcap`: the model's
    attention-logit soft-cap (Gemma-2), so the weights are the ones its attention really uses."""
    n_kv, t = keys.shape[1], keys.shape[2]
    q_len = query.shape[2]
    q = query[:, :, -OBSERVED_QUERIES:].float()
    k = keys.float().repeat_interleave(q.shape[1] // n_kv, dim=1)
    logits = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if mask is not None:
        m = mask[:, :, -q.shape[2] :, :t]
        logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.float()
    elif q.shape[2] > 1:
        q_pos = t - q_len + (q_len - q.shape[2]) + torch.arange(q.shape[2], device=q.device)
        future = torch.arange(t, device=q.device).unsqueeze(0) > q_pos.unsqueeze(1)
        logits = logits.masked_fill(future, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a fully masked (pad) query attends nothing
    b, _, nq, t = probs.shape
    return _query_mean(probs.view(b, n_kv, -1, nq, t), real).sum(dim=2)


def magnitude(x: torch.Tensor) -> torch.Tensor:
    return x.float().abs()


def key_output_aware(keys: torch.Tensor, q_bar: torch.Tensor) -> torch.Tensor:
    """|q̄_d · k_d| with q̄ per token [B, H_kv, T, D] (averaged over that token's steps in the window)."""
    return q_bar * keys.float().abs()


def value_output_aware(values: torch.Tensor, a_bar: torch.Tensor) -> torch.Tensor:
    """a_t · |v_d| with a_t per token [B, H_kv, T]: constant within a token, so per-token it ranks like |v|."""
    return a_bar.unsqueeze(-1) * values.float().abs()


def think_channel_score(prompt: torch.Tensor, q_stat: torch.Tensor | None) -> torch.Tensor:
    """ThinK channel importance [B, H_kv, D]: mean over prompt tokens of x², times the query factor for K."""
    score = prompt.float().square().mean(dim=2)
    return score * q_stat if q_stat is not None else score
