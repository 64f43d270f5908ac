"""Pad-aware pruning on left-padded batches against plain-PyTorch computations of each row alone."""

from __future__ import annotations

import pytest
import torch

from eval.registry import check_batch_size
from mustafar.config import KVConfig
from mustafar.pruning import Observation, RowPruner, SidePruner, scores

PADS = [0, 5, 40]  # 5 and 40 are off the 32-token grid


def padded(total=110, h=2, d=8, seed=0):
    return torch.randn(len(PADS), h, total, d, generator=torch.Generator().manual_seed(seed))


def top_k_by_loop(values: list[float], keep: int) -> set[int]:
    """Indices of the `keep` largest values; equal values go to the lower index."""
    return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:keep])


def test_query_statistics_average_each_rows_real_queries_only():
    b, hq, n_kv, t, d = len(PADS), 4, 2, 50, 8  # row 2 has 10 real queries: fewer than the 32 observed
    query = torch.randn(b, hq, t, d, generator=torch.Generator().manual_seed(1))
    real = scores.real_queries(t, t, torch.tensor(PADS))
    got_q = scores.query_stat(query, n_kv, real)
    got_think = scores.think_query_stat(query, n_kv, real)
    for row, pad in enumerate(PADS):
        q = query[row, :, pad:][:, -32:]  # this row's own last (up to) 32 queries
        for kv in range(n_kv):
            group = q[kv * 2 : kv * 2 + 2]
            torch.testing.assert_close(got_q[row, kv], group.abs().mean(dim=1).sum(dim=0))
            torch.testing.assert_close(got_think[row, kv], group.square().mean(dim=1).mean(dim=0))


def test_attention_statistic_ignores_pad_queries_and_keys():
    b, hq, n_kv, t, d = len(PADS), 2, 1, 50, 8
    g = torch.Generator().manual_seed(2)
    query, keys = torch.randn(b, hq, t, d, generator=g), torch.randn(b, n_kv, t, d, generator=g)
    cols = torch.arange(t)
    real_key = cols.unsqueeze(0) >= torch.tensor(PADS).unsqueeze(1)  # [B, T]
    mask = (cols.view(1, 1, t, 1) >= cols.view(1, 1, 1, t)) & real_key.view(b, 1, 1, t)
    got = scores.attention_stat(query, keys, 0.5, mask, scores.real_queries(t, t, torch.tensor(PADS)))
    for row, pad in enumerate(PADS):
        q, k = query[row, :, pad:][:, -32:], keys[row, 0, pad:]
        n = k.shape[0]
        logits = q @ k.T * 0.5
        causal = torch.arange(n - q.shape[1], n).unsqueeze(1) >= torch.arange(n).unsqueeze(0)
        probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
        torch.testing.assert_close(got[row, 0, pad:], probs.mean(dim=1).sum(dim=0))
        assert torch.all(got[row, 0, :pad] == 0)


def test_token_rule_counts_real_tokens_only():
    tail = padded()
    pruner = SidePruner(KVConfig(k_sparsity=0.5).k, "k", "exact", window=32)
    pruner.pads = torch.tensor(PADS)
    n, mask = pruner.step(tail, Observation(q_len=tail.shape[2]))
    assert n == 110 - 32
    for row, pad in enumerate(PADS):
        real = n - pad
        assert pruner.row_counts(3)[row] == (real * 2 * 4, real * 2 * 8)


def test_channel_groups_start_at_each_rows_first_token():
    """Per-channel magnitude, window 0: each row alone prunes its complete 32-token groups counted from its own
    first token; the batch must zero exactly those entries (pads untouched) and release common columns only."""
    tail = padded()
    original = tail.clone()
    pruner = RowPruner(KVConfig(k_sparsity=0.5, k_direction="channel").k, "k", "exact", 0, PADS)
    n, mask = pruner.step(tail, Observation(q_len=tail.shape[2]))
    h, d = tail.shape[1], tail.shape[3]
    released = min(pad + (110 - pad) // 32 * 32 for pad in PADS)
    assert n == released and mask.shape == (3, h, released, d)
    for row, pad in enumerate(PADS):
        expected = original[row].clone()
        length = 110 - pad
        for g in range(length // 32):
            cols = range(pad + 32 * g, pad + 32 * (g + 1))
            for hi in range(h):
                for c in range(d):
                    values = [abs(original[row, hi, t, c].item()) for t in cols]
                    kept = top_k_by_loop(values, 16)
                    for i, t in enumerate(cols):
                        if i not in kept:
                            expected[hi, t, c] = 0
        assert torch.equal(tail[row], expected)
        kept, judged = pruner.row_counts(3)[row]
        assert judged == (length // 32) * 32 * h * d and kept == judged // 2


def test_think_scores_each_rows_own_prompt():
    tail = padded(total=60)
    q_stat = torch.rand(3, 2, 8, generator=torch.Generator().manual_seed(3))
    pruner = RowPruner(KVConfig(k_sparsity=0.5, k_scorer="think").k, "k", "exact", 32, PADS)
    original = tail.clone()
    n, _ = pruner.step(tail, Observation(q_len=60, think_query_stat=q_stat))
    assert n == 60
    for row, pad in enumerate(PADS):
        prompt = original[row, :, pad:]
        for hi in range(2):
            score = (prompt[hi].square().mean(dim=0) * q_stat[row, hi]).tolist()
            kept = top_k_by_loop(score, 4)
            for c in range(8):
                assert bool((tail[row, hi, pad:, c] == 0).all()) == (c not in kept)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "4", "max", None])
def test_bad_batch_size_is_named(value):
    with pytest.raises(ValueError, match="benchmark.batch_size="):
        check_batch_size(value)


def test_good_batch_sizes_pass():
    check_batch_size("auto")
    check_batch_size(4)
