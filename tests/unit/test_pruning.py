"""Pruning rules against plain-Python references written from docs/method.md §2-§4 (loops, sorted(), no shared code)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from mustafar.config import KVConfig, PruneRule
from mustafar.pruning import (
    Observation,
    SidePruner,
    exact_keep,
    keep_mask,
    reference_think_keep,
    reference_topk_keep,
    scores,
    topk_mask,
)


def ref_topk_row(values: list[float], keep: int) -> list[bool]:
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))  # ties -> lower index
    kept = set(order[:keep])
    return [i in kept for i in range(len(values))]


def ref_threshold_row(values: list[float], sparsity: float) -> list[bool]:
    k = int(sparsity * len(values))
    if k == 0:
        return [True] * len(values)
    threshold = sorted(values)[k - 1]
    return [v >= threshold for v in values]


def rows_of(t: torch.Tensor) -> list[list[float]]:
    return t.reshape(-1, t.shape[-1]).tolist()


@pytest.mark.parametrize(
    ("n", "s", "exact", "reference"),
    [(128, 0.5, 64, 64), (128, 0.7, 38, 38), (64, 0.7, 19, 19), (32, 0.7, 10, 9), (128, 0.0, 128, 128)],
)
def test_keep_counts(n, s, exact, reference):
    assert exact_keep(n, s) == exact == math.floor((1 - s) * n + 0.5)
    assert reference_topk_keep(n, s) == reference


def test_exact_keep_rounds_exact_halves_up_as_exact_arithmetic_does():
    """round half up of (1 − s)·n in exact rational arithmetic, for sparsities given to two decimals: floating
    point put (1 − 0.9)·15 = 1.5 just below the half (1 kept instead of 2)."""
    for hundredths in range(0, 100):
        s = Fraction(hundredths, 100)
        for n in range(1, 300):
            assert exact_keep(n, float(s)) == math.floor((1 - s) * n + Fraction(1, 2)), (n, float(s))
    assert (exact_keep(15, 0.9), exact_keep(25, 0.9), exact_keep(45, 0.9)) == (2, 3, 5)


def test_keep_mask_refuses_an_unknown_rule():
    with pytest.raises(ValueError, match="unknown keep rule 'bogus'"):
        keep_mask(torch.rand(1, 1, 4, 64), 0.5, "bogus", True)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("rule", ["exact", "reference"])
def test_per_token_magnitude_matches_reference(sparsity, rule):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 64)
    x[0, 0, 0, :8] = 0.25  # ties: exact keeps lower indices first, reference keeps every tie >= the threshold
    got = keep_mask(x.abs(), sparsity, rule, thresholded=True)
    for row, mask in zip(rows_of(x.abs()), rows_of(got)):
        want = (
            ref_topk_row(row, exact_keep(64, sparsity))
            if rule == "exact"
            else ref_threshold_row(row, sparsity)
        )
        assert [bool(m) for m in mask] == want
    if rule == "exact":
        assert (got.sum(-1) == exact_keep(64, sparsity)).all()
    else:  # the published counts: D - int(s*D) + 1 plus ties
        assert (got.sum(-1) >= 64 - int(sparsity * 64) + 1).all()


def test_reference_topk_rule_counts():
    x = torch.rand(4, 128)
    got = keep_mask(x, 0.7, "reference", thresholded=False)
    assert (got.sum(-1) == 38).all()


def test_topk_mask_ties_go_to_lower_index():
    score = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.5]])
    assert topk_mask(score, 2).tolist() == [[False, True, True, False, False]]


def run_pruner(rule: PruneRule, side: str, x: torch.Tensor, window: int, obs_fn, keep_rule="exact", steps=0):
    """Prefill with x[:, :, :T0] then feed one token per step; return the pruner and the masked tensor."""
    pruner = SidePruner(rule, side, keep_rule, window)
    t0 = x.shape[2] - steps
    cur = x[:, :, :t0].clone()
    for i in range(steps + 1):
        if i > 0:
            cur = torch.cat([cur, x[:, :, t0 + i - 1 : t0 + i]], dim=2)
        start = pruner.final
        n, mask = pruner.step(cur[:, :, start:], obs_fn(cur, t0 if i == 0 else 1))
        if mask is not None:
            cur[:, :, start : start + n].masked_fill_(~mask, 0)
    return pruner, cur


def test_window_schedule_per_token():
    torch.manual_seed(2)
    b, h, t, d, r = 1, 2, 50, 64, 8
    x = torch.randn(b, h, t + 6, d)
    for steps in (0, 1, 6):
        pruner, out = run_pruner(
            PruneRule(0.5, "token", "magnitude"),
            "k",
            x[:, :, : t + steps],
            r,
            lambda c, q: Observation(q_len=q),
            steps=steps,
        )
        total = t + steps
        assert (
            pruner.final == total - r
        )  # after prefill: all but the last r; each decode step prunes one more
        nnz = (out != 0).sum(-1)
        assert (nnz[:, :, : total - r] == 32).all() and (nnz[:, :, total - r :] == d).all()


def test_per_channel_groups_wait_for_the_whole_group():
    torch.manual_seed(3)
    x = torch.randn(1, 1, 100, 64)
    pruner, out = run_pruner(
        PruneRule(0.5, "channel", "magnitude"), "v", x, 32, lambda c, q: Observation(q_len=q)
    )
    assert pruner.final == 64  # (100 - 32) // 32 * 32
    for g in range(2):  # each channel keeps 16 of each aligned 32-token group, by |v| (reference rule)
        block = x[0, 0, 32 * g : 32 * (g + 1)].abs()
        for c in range(64):
            col = block[:, c].tolist()
            assert [bool(v) for v in (out[0, 0, 32 * g : 32 * (g + 1), c] != 0)] == ref_topk_row(col, 16)
    assert torch.equal(out[0, 0, 64:], x[0, 0, 64:])


def test_key_output_aware_uses_group_query_statistic():
    torch.manual_seed(4)
    b, h_kv, n_rep, t, d = 1, 2, 3, 40, 64
    k = torch.randn(b, h_kv, t, d)
    q = torch.randn(b, h_kv * n_rep, t, d)
    stat = scores.query_stat(q, h_kv)
    for kv in range(h_kv):  # q̄_d = mean over last 32 queries of |q_d|, summed over the group's heads
        want = sum(q[0, kv * n_rep + r, -32:].abs().mean(0) for r in range(n_rep))
        torch.testing.assert_close(stat[0, kv], want)
    pruner, out = run_pruner(
        PruneRule(0.7, "token", "output_aware"),
        "k",
        k,
        8,
        lambda c, ql: Observation(q_len=ql, query_stat=stat),
    )
    for kv in range(h_kv):
        for tok in range(t - 8):
            score = (stat[0, kv] * k[0, kv, tok].abs()).tolist()
            assert [bool(v) for v in out[0, kv, tok] != 0] == ref_topk_row(score, exact_keep(d, 0.7))


def test_output_aware_accumulates_while_in_window():
    """A token's score is averaged over its prefill observation and every decode step it spends in the window."""
    b, h, d, r = 1, 1, 64, 2
    k = torch.randn(b, h, 6, d).abs() + 1
    stats = [torch.rand(b, h, d) for _ in range(4)]
    pruner = SidePruner(PruneRule(0.5, "token", "output_aware"), "k", "exact", r)
    cur = k[:, :, :3]
    pruner.step(cur, Observation(q_len=3, query_stat=stats[0]))  # tokens 0..2, token 0 leaves (3 - 2)
    for step in (1, 2, 3):
        cur = k[:, :, : 3 + step]
        n, mask = pruner.step(cur[:, :, pruner.final :], Observation(q_len=1, query_stat=stats[step]))
        if step == 2:  # token 2 was in the window for prefill, step 1 and step 2 -> mean of 3 statistics
            q_bar = (stats[0] + stats[1] + stats[2]) / 3
            want = ref_topk_row((q_bar[0, 0] * k[0, 0, 2]).tolist(), 32)
            assert [bool(m) for m in mask[0, 0, 0]] == want


def test_value_output_aware_per_token_ranks_like_magnitude():
    torch.manual_seed(5)
    v = torch.randn(2, 2, 20, 64)
    a = torch.rand(2, 2, 20) + 0.01
    s = scores.value_output_aware(v, a)
    assert torch.equal(keep_mask(s, 0.5, "exact", False), keep_mask(v.abs(), 0.5, "exact", True))


def test_attention_stat_matches_softmax():
    torch.manual_seed(6)
    q = torch.randn(1, 4, 10, 16)
    k = torch.randn(1, 2, 10, 16)
    got = scores.attention_stat(q, k, 0.25, None)  # causal: query i sees keys <= i
    want = torch.zeros(1, 2, 10)
    for h in range(4):
        logits = (q[0, h] @ k[0, h // 2].T) * 0.25
        logits = logits.masked_fill(torch.triu(torch.ones(10, 10, dtype=torch.bool), 1), float("-inf"))
        want[0, h // 2] += torch.softmax(logits, -1).mean(0)
    torch.testing.assert_close(got, want)


def test_think_drops_lowest_channels_for_every_prompt_token():
    torch.manual_seed(7)
    b, h_kv, n_rep, t, d = 1, 2, 2, 48, 64
    k = torch.randn(b, h_kv, t, d)
    q = torch.randn(b, h_kv * n_rep, t, d)
    qs = scores.think_query_stat(q, h_kv)
    pruner, out = run_pruner(
        PruneRule(0.5, "channel", "think"),
        "k",
        k,
        32,
        lambda c, ql: Observation(q_len=ql, think_query_stat=qs),
    )
    assert pruner.final == t  # no window for the baseline
    for kv in range(h_kv):
        qf = sum(q[0, kv * n_rep + r, -32:].square().mean(0) for r in range(n_rep)) / n_rep
        score = (qf * k[0, kv].square().mean(0)).tolist()
        keep = ref_topk_row(score, 32)
        assert [bool(c) for c in (out[0, kv] != 0).all(0)] == keep
        assert not (out[0, kv][:, [not c for c in keep]] != 0).any()


def test_measured_sparsity_counts_only_final_tokens():
    x = torch.randn(1, 2, 40, 64)
    pruner, _ = run_pruner(PruneRule(0.7, "token", "magnitude"), "v", x, 8, lambda c, q: Observation(q_len=q))
    assert pruner.judged == 2 * 32 * 64 and pruner.kept == 2 * 32 * exact_keep(64, 0.7)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"k_sparsity": 1.0}, "kv.k_sparsity=1.0 is outside [0, 1)"),
        ({"v_sparsity": -0.1}, "kv.v_sparsity=-0.1 is outside [0, 1)"),
        ({"k_sparsity": True}, "kv.k_sparsity=True is a boolean, not a number"),  # float(True) is 1.0
        ({"v_sparsity": False}, "kv.v_sparsity=False is a boolean, not a number"),  # and False read as 0
        ({"k_scorer": "random"}, "kv.k_scorer='random' is not allowed"),
        ({"v_direction": "diagonal"}, "kv.v_direction='diagonal' is not allowed"),
        ({"window": -1}, "kv.window=-1 must be an integer >= 0"),
        ({"mode": "sparse"}, "kv.mode='sparse' is not allowed"),
        ({"keep_rule": "loose"}, "kv.keep_rule='loose' is not allowed"),
    ],
)
def test_bad_policy_values_are_named(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        KVConfig(**override)


def test_every_direction_scorer_combination_runs_for_k_and_v():
    torch.manual_seed(8)
    x = torch.randn(1, 2, 70, 64)
    q = torch.randn(1, 4, 70, 64)
    obs = Observation(
        q_len=70,
        query_stat=scores.query_stat(q, 2),
        think_query_stat=scores.think_query_stat(q, 2),
        attention_stat=scores.attention_stat(q, x, 0.125, None),
    )
    for side in ("k", "v"):
        for direction in ("token", "channel"):
            for scorer in ("magnitude", "output_aware", "think"):
                policy = KVConfig(
                    **{f"{side}_sparsity": 0.5, f"{side}_direction": direction, f"{side}_scorer": scorer}
                )
                rule = policy.k if side == "k" else policy.v
                pruner = SidePruner(rule, side, "exact", 32)
                n, mask = pruner.step(x, obs)
                assert n > 0 and mask is not None
                assert abs(1 - mask.float().mean().item() - 0.5) < 1e-6


# --- per-channel V at prefill and after, against a plain-PyTorch re-implementation of the published code ---


def published_channel_topk(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the `keep` largest scores of each channel over the tokens of `score` [T, D]: a column-by-column loop
    (sorted() per column, ties to the lower token) standing in for the published `torch.sort(dim=-2)`."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    for c in range(score.shape[1]):
        col = score[:, c].tolist()
        for t in sorted(range(len(col)), key=lambda i: (-col[i], i))[:keep]:
            mask[t, c] = True
    return mask


def published_group_threshold(v: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The published per-channel magnitude rule on one 32-token group [32, D]: per channel, keep every |v| >= the
    int(s·32)-th smallest (kthvalue with k = max(1, int(s·32)))."""
    k = max(1, int(sparsity * 32))
    mask = torch.zeros_like(v, dtype=torch.bool)
    for c in range(v.shape[1]):
        col = v[:, c].abs().tolist()
        threshold = sorted(col)[k - 1]
        for t, x in enumerate(col):
            mask[t, c] = x >= threshold
    return mask


def last32_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """a_t of the published prefill: softmax(q·kᵀ/√D) of the last 32 queries (causal), summed over those queries
    and over the query heads of each KV head -> [H_kv, T] (batch 1)."""
    h_q, t, d = q.shape[1], q.shape[2], q.shape[3]
    n_rep = h_q // k.shape[1]
    out = torch.zeros(k.shape[1], t, dtype=torch.float64)
    for h in range(h_q):
        for i in range(max(0, t - 32), t):
            logits = [float(q[0, h, i] @ k[0, h // n_rep, j]) / math.sqrt(d) for j in range(i + 1)]
            top = max(logits)
            e = [math.exp(x - top) for x in logits]
            for j in range(i + 1):
                out[h // n_rep, j] += e[j] / sum(e)
    return out


def drive_value_pruner(
    rule: PruneRule, keep_rule: str, v: torch.Tensor, prompt: int, window: int, attention: torch.Tensor
) -> tuple[SidePruner, torch.Tensor, list[int]]:
    """Prefill `prompt` tokens, then one token per step. Every call observes the same a_t per token
    (`attention` [B, H, T], the mean over the calls a token spends in the window is then a_t itself)."""
    pruner = SidePruner(rule, "v", keep_rule, window)
    cur, finals = v[:, :, :prompt].clone(), []
    for total in range(prompt, v.shape[2] + 1):
        if total > prompt:
            cur = torch.cat([cur, v[:, :, total - 1 : total]], dim=2)
        obs = Observation(q_len=prompt if total == prompt else 1, attention_stat=attention[:, :, :total])
        start = pruner.final
        n, mask = pruner.step(cur[:, :, start:], obs)
        if mask is not None:
            cur[:, :, start : start + n].masked_fill_(~mask, 0)
        finals.append(pruner.final)
    return pruner, cur, finals


@pytest.mark.parametrize(("keep_rule", "sparsity"), [("exact", 0.5), ("exact", 0.7), ("reference", 0.7)])
def test_per_channel_output_aware_ranks_the_whole_prompt_at_prefill(keep_rule, sparsity):
    """Published Kt_Mag_Vc_Opa prefill: each channel ranked over the prompt by a_t·|v_td|, a_t from the last 32
    prompt queries; `reference` ranks every prompt token (no window) and keeps int(T·(1−s)), `exact` ranks the
    tokens outside the window and keeps round((1−s)·n). Generated tokens: 32-token groups from the first unranked
    token, each pruned once all of it has left the window."""
    torch.manual_seed(11)
    b, h_kv, n_rep, d, prompt, window, steps = 1, 2, 2, 16, 75, 8, 80
    total = prompt + steps
    q = torch.randn(b, h_kv * n_rep, prompt, d) * 3  # peaked attention, as in real models
    k = torch.randn(b, h_kv, prompt, d)
    v = torch.randn(b, h_kv, total, d)
    a = torch.rand(b, h_kv, total) + 0.01
    a[:, :, :prompt] = last32_attention(q, k).float()
    # the framework averages over the 32 queries where the published code sums: a constant factor, same ranking
    torch.testing.assert_close(scores.attention_stat(q, k, d**-0.5, None) * 32, a[:, :, :prompt])
    pruner, out, finals = drive_value_pruner(
        PruneRule(sparsity, "channel", "output_aware"), keep_rule, v, prompt, window, a
    )
    ranked = prompt if keep_rule == "reference" else prompt - window
    keep = int(ranked * (1 - sparsity)) if keep_rule == "reference" else round((1 - sparsity) * ranked)
    groups = [(g, g + 32) for g in range(ranked, total - window - 31, 32)]
    assert len(groups) == 2  # [ranked, +32) and [ranked+32, +64) complete; the rest stays dense
    # the pattern became final at prefill (ranked tokens) and when a group's last token left the window
    want_finals = [ranked + 32 * sum(e <= t - window for _, e in groups) for t in range(prompt, total + 1)]
    assert finals == want_finals
    for h in range(h_kv):
        score = a[0, h, :, None] * v[0, h].abs()
        want = torch.ones(total, d, dtype=torch.bool)
        want[:ranked] = published_channel_topk(score[:ranked], keep)
        for lo, hi in groups:
            group_keep = int(32 * (1 - sparsity)) if keep_rule == "reference" else round(32 * (1 - sparsity))
            want[lo:hi] = published_channel_topk(score[lo:hi], group_keep)
        assert torch.equal(out[0, h] != 0, want)
    assert pruner.keep_for(d) is None  # per-channel counts vary per token: the general compressed layout


def test_per_channel_output_aware_prefill_is_not_a_group_quota():
    """One attended token per 32 and a low-attention remainder: whole-prompt ranking keeps the attended rows, a
    per-group quota would have to keep 16 entries of every 32 tokens per channel."""
    v = torch.ones(1, 1, 96, 4)
    a = torch.full((1, 1, 96), 1e-4)
    a[0, 0, :64] = 1.0  # the first two groups are attended, the third is not
    _, out, _ = drive_value_pruner(PruneRule(0.5, "channel", "output_aware"), "exact", v, 96, 0, a)
    assert (out[0, 0, :48] != 0).all() and not (out[0, 0, 64:] != 0).any()


@pytest.mark.parametrize(("keep_rule", "sparsity"), [("reference", 0.7), ("reference", 0.5), ("exact", 0.7)])
def test_per_channel_magnitude_keeps_the_published_32_token_groups(keep_rule, sparsity):
    """Published Kt_Mag_Vc_Mag: the prompt outside the window is pruned in 32-token groups aligned to position 0
    (kthvalue threshold per channel and group); the incomplete group waits until it has left the window."""
    torch.manual_seed(12)
    d, prompt, window, steps = 16, 90, 8, 40
    total = prompt + steps
    v = torch.randn(1, 2, total, d)
    v[0, 0, 5:9, 3] = 0.5  # ties: the published threshold keeps them all
    pruner, out, finals = drive_value_pruner(
        PruneRule(sparsity, "channel", "magnitude"), keep_rule, v, prompt, window, torch.ones(1, 2, total)
    )
    assert finals == [(t - window) // 32 * 32 for t in range(prompt, total + 1)]
    for h in range(2):
        want = torch.ones(total, d, dtype=torch.bool)
        for lo in range(0, (total - window) // 32 * 32, 32):
            block = v[0, h, lo : lo + 32]
            want[lo : lo + 32] = (
                published_group_threshold(block, sparsity)
                if keep_rule == "reference"
                else published_channel_topk(block.abs(), round(32 * (1 - sparsity)))
            )
        assert torch.equal(out[0, h] != 0, want)


@pytest.mark.parametrize(
    ("d", "s", "keep"),  # the published ThinK drops int(D·s) channels: D − int(D·s) survive
    [(128, 0.5, 64), (128, 0.7, 39), (128, 0.9, 13), (64, 0.5, 32), (64, 0.7, 20), (64, 0.9, 7)],
)
def test_think_reference_keeps_the_published_count(d, s, keep):
    assert reference_think_keep(d, s) == keep
    torch.manual_seed(13)
    x = torch.randn(1, 2, 40, d)
    for side in ("k", "v"):
        obs = Observation(q_len=40, think_query_stat=torch.rand(1, 2, d) if side == "k" else None)
        for keep_rule, want in (("reference", keep), ("exact", round((1 - s) * d))):
            pruner = SidePruner(PruneRule(s, "channel", "think"), side, keep_rule, 32)
            n, mask = pruner.step(x, obs)
            assert n == 40 and pruner.keep_for(d) == want
            assert (mask.sum(-1) == want).all()
            # the kept channels are the highest-scoring ones (plain mean of squares, times the query factor)
            score = x.square().mean(2) * (obs.think_query_stat if side == "k" else 1)
            for h in range(2):
                kept = set(sorted(range(d), key=lambda c: (-float(score[0, h, c]), c))[:want])
                assert {c for c in range(d) if mask[0, h, 0, c]} == kept
