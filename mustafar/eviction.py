"""SnapKV-style token eviction at the end of prefill, applied before per-token pruning (docs/method.md §8).

Each prompt token is scored by the softmax attention it receives from the last `evict_window` prompt queries,
summed over those queries and over the query heads of its KV group (one decision per KV head, GQA caches are
never repeated), then max-pooled over `evict_pool` neighbouring tokens so a kept token keeps its context. Per
(row, KV head) the `token_budget - evict_window` best-scored tokens before the window survive, plus the whole
window; ties go to the earlier token. Every head keeps the same number of tokens, so the survivors of all heads
of a row still form equal-length rows (what the dense cache and the compressed stores hold). A row whose real
prompt is not longer than the budget is untouched. Pad columns never enter the softmax, the scores or the budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mustafar.config import KVConfig


def snapkv_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    window: int,
    pool: int,
    pads: list[int],
    softcap: float | None = None,
) -> torch.Tensor:
    """Pooled scores [B, H_kv, T - window] of the tokens before the observation window (pad columns -inf).

    `query` [B, H_q, q_len, D] are the prompt's queries (its last `window` observe), `key` [B, H_kv, T, D] the
    whole cached prompt, whose last q_len columns are the queries' own."""
    b, h_q, q_len, _ = query.shape
    h_kv, t = key.shape[1], key.shape[2]
    q = query[:, :, -window:].float()
    k = key.float().repeat_interleave(h_q // h_kv, dim=1)
    logits = torch.matmul(q, k.transpose(2, 3)) * scaling
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    cols = torch.arange(t, device=key.device)
    rows = torch.arange(t - window, t, device=key.device)
    visible = cols.view(1, 1, 1, t) <= rows.view(1, 1, window, 1)  # causal within the window
    pad = torch.tensor(pads, device=key.device).view(b, 1, 1, 1)
    visible = visible & (cols.view(1, 1, 1, t) >= pad)
    weights = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
    summed = weights.sum(dim=2).view(b, h_kv, h_q // h_kv, t).sum(dim=2)[:, :, : t - window]
    pooled = F.max_pool1d(summed, pool, stride=1, padding=pool // 2) if pool > 1 else summed
    return pooled.masked_fill(cols[: t - window].view(1, 1, -1) < pad.view(b, 1, 1), float("-inf"))


def snapkv_keep(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    policy: KVConfig,
    pads: list[int],
    softcap: float | None = None,
) -> list[torch.Tensor]:
    """Per row, the kept columns [H_kv, n] (ascending; n = min(budget, real prompt tokens), equal over heads)."""
    t = key.shape[2]
    budget, window = policy.token_budget, policy.evict_window
    scored = [b for b, pad in enumerate(pads) if t - pad > budget]
    kept = [torch.arange(pad, t, device=key.device).expand(key.shape[1], -1) for pad in pads]
    if not scored:
        return kept
    pooled = snapkv_scores(
        query[scored], key[scored], scaling, window, policy.evict_pool, [pads[b] for b in scored], softcap
    )
    tail = torch.arange(t - window, t, device=key.device).expand(key.shape[1], -1)
    for i, b in enumerate(scored):
        real = pooled[i, :, pads[b] :]
        order = torch.sort(real, dim=-1, descending=True, stable=True).indices[:, : budget - window]
        chosen = torch.sort(order, dim=-1).values + pads[b]
        kept[b] = torch.cat([chosen, tail], dim=-1)
    return kept
