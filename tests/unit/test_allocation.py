"""Per-layer sparsity lists and the error allocation rule (mustafar.allocation) against hand-worked values and an
independent plain-PyTorch computation of the rule; the config's validation and stable job ids."""

from __future__ import annotations

import pytest
import torch

from mustafar.allocation import allocate_keeps, pruning_error_terms
from mustafar.cache import MustafarCache
from mustafar.config import ConfigError, KVConfig
from mustafar.pruning import Observation, exact_keep, head_topk_mask


def reference_keeps(errors: list[float], budget: int, lo: int, hi: int) -> list[int]:
    """The rule of docs/method.md §7 solved exactly: Σ clamp(c·e_i, lo, hi) is piecewise linear in c, so walk its
    breakpoints to the segment that reaches N·budget, solve it, then give the missing units by largest remainder."""
    e = torch.tensor(errors, dtype=torch.float64)
    total = len(errors) * budget

    def spent(c: float) -> float:
        return float((c * e).clamp(lo, hi).sum())

    points = sorted({0.0, *(lo / x for x in errors if x > 0), *(hi / x for x in errors if x > 0)})
    for a, b in zip(points, points[1:]):
        if spent(b) >= total:
            slope = (spent(b) - spent(a)) / (b - a)
            c = a + (total - spent(a)) / slope
            break
    target = (c * e).clamp(lo, hi).tolist()
    keeps = [int(t // 1) for t in target]
    order = sorted(range(len(target)), key=lambda i: (-(target[i] - keeps[i]), i))
    for i in order[: total - sum(keeps)]:
        keeps[i] += 1
    return keeps


def test_keeps_follow_the_errors_exactly_when_nothing_clamps():
    # three layers with errors 0.1, 0.2, 0.3 share 3 x 20 kept entries: 60 · e / Σe = 10, 20, 30
    assert allocate_keeps(torch.tensor([[0.1, 0.2, 0.3]]), 20, 3, 64).tolist() == [[10, 20, 30]]


def test_clamping_and_rounding_by_hand():
    # low clamp: 30 · 0.01 / 1.01 < 3, so unit 0 gets 3 and the others share 27 equally: 13.5 each; the one
    # missing unit after flooring goes to the lower index on a tie
    assert allocate_keeps(torch.tensor([[0.01, 0.5, 0.5]]), 10, 3, 16).tolist() == [[3, 14, 13]]
    # high clamp: unit 2 would get 25 > 16; with it at 16 the others share 14: c = 7
    assert allocate_keeps(torch.tensor([[1.0, 1.0, 10.0]]), 10, 3, 16).tolist() == [[7, 7, 16]]
    # no error measured: the uniform keep
    assert allocate_keeps(torch.zeros(1, 4), 19, 3, 64).tolist() == [[19] * 4]


def test_keeps_match_an_independent_solution_and_spend_the_budget_exactly():
    g = torch.Generator().manual_seed(0)
    for rows, units, budget in ((8, 30, 19), (8, 90, 38), (4, 3, 45), (4, 60, 6)):
        errors = torch.rand(rows, units, generator=g, dtype=torch.float64) ** 3  # skewed: clamps at both ends
        lo, hi = min(exact_keep(64, 0.95), budget), 64
        keeps = allocate_keeps(errors, budget, lo, hi)
        for r in range(rows):
            assert keeps[r].tolist() == reference_keeps(errors[r].tolist(), budget, lo, hi)
        assert keeps.sum(dim=1).tolist() == [units * budget] * rows  # the mean kept count is the budget
        assert int(keeps.min()) >= lo and int(keeps.max()) <= hi
        for r in range(rows):  # a larger error never gets a smaller keep
            order = errors[r].argsort()
            assert bool((keeps[r][order].diff() >= 0).all())


def test_a_tiny_error_still_spends_exactly_the_budget():
    """An error 1e-70 made the bisection's bracket so wide that 200 halvings left it unconverged: the keeps summed
    to 259 for a budget of 95. They must match the exact solution whatever the errors' span."""
    for tiny in (1e-41, 1e-70, 1e-200):
        errors = torch.tensor([[tiny, 0.5, 0.3, 0.2, 0.1]], dtype=torch.float64)
        keeps = allocate_keeps(errors, 19, 3, 64)
        assert keeps[0].tolist() == reference_keeps(errors[0].tolist(), 19, 3, 64) == [3, 42, 25, 17, 8]


def test_budget_outside_the_bounds_is_refused():
    with pytest.raises(ValueError, match="budget 2 is outside"):
        allocate_keeps(torch.ones(1, 3), 2, 3, 64)


def test_pruning_error_terms_by_hand():
    # one row, one head, two tokens, keep 1: [3, 4, 0, 0] drops 3² = 9 of 25; [1, 2, 2, 0] drops 1 + 4 of 9
    rows = torch.tensor([[[[3.0, 4.0, 0.0, 0.0], [1.0, 2.0, 2.0, 0.0]]]])
    dropped, total = pruning_error_terms(rows, 1)
    assert dropped.tolist() == [[14.0]] and total.tolist() == [[34.0]]
    padded = torch.cat([rows, rows.flip(2)], dim=0)  # row 1 treats its first column as padding
    dropped, total = pruning_error_terms(padded, 1, pads=[0, 1])
    assert dropped.tolist() == [[14.0], [9.0]] and total.tolist() == [[34.0], [25.0]]


def test_finite_entries_beyond_fp32_squares_give_the_same_errors_scaled():
    """bf16 keys of 2^70 squared to inf in fp32, and the allocation refused a finite prompt as non-finite. A power of
    two scales every term exactly: the sums are the unscaled ones times 2^140, finite in fp64."""
    x = torch.randn(2, 3, 40, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    small, big = pruning_error_terms(x, 19, pads=[0, 7]), pruning_error_terms(x * 2.0**70, 19, pads=[0, 7])
    for a, b in zip(small, big):
        assert torch.equal(b, a * 2.0**140) and bool(b.isfinite().all())
    ref = x.double().square()  # and the terms themselves, exactly (fp32 squares of bf16 entries are exact)
    kept = ref.topk(19, dim=-1).values.sum(-1)
    real = (torch.arange(40).unsqueeze(0) >= torch.tensor([0, 7]).unsqueeze(1)).unsqueeze(1)
    assert torch.equal(small[1], (ref.sum(-1) * real).sum(-1))
    assert torch.allclose(small[0], ((ref.sum(-1) - kept) * real).sum(-1), rtol=1e-12)


def test_head_topk_mask_keeps_each_heads_count():
    score = torch.rand(2, 3, 5, 64, generator=torch.Generator().manual_seed(1))
    keeps = torch.tensor([[1, 19, 64], [7, 7, 33]])
    mask = head_topk_mask(score, keeps)
    assert torch.equal(mask.sum(-1), keeps.view(2, 3, 1).expand(2, 3, 5))
    for b in range(2):
        for h in range(3):  # the same entries as a plain top-k of that count
            top = score[b, h].topk(int(keeps[b, h]), dim=-1).indices
            assert torch.equal(mask[b, h], torch.zeros_like(mask[b, h]).scatter_(-1, top, True))


def three_layer_prompt(scales: list[float], tokens: int = 12, d: int = 32) -> list[torch.Tensor]:
    """K per layer [1, 1, tokens, d] whose top entry is `scale` times larger than the rest: a larger scale puts
    more energy into the kept entries, hence a smaller pruning error."""
    g = torch.Generator().manual_seed(2)
    out = []
    for scale in scales:
        x = torch.rand(1, 1, tokens, d, generator=g) + 0.5
        x[..., 0] = scale
        out.append(x)
    return out


@pytest.mark.parametrize("mode", ["mask", "compressed"])
def test_error_allocation_of_three_layers_equals_the_rule_computed_by_hand(mode):
    policy = KVConfig(k_sparsity=0.75, allocation="error", window=4, mode=mode)
    keys = three_layer_prompt([10.0, 5.0, 1.0])
    cache = MustafarCache(policy, num_layers=3)
    d, n = 32, keys[0].shape[2] - policy.window
    for layer, k in zip(cache.layers, keys):
        layer.bound = True
        layer.update(k.clone(), k.clone())
    for layer in cache.layers:  # pruning waits until the last layer has reported
        layer.after_attention(Observation(q_len=k.shape[2]))
        assert layer.pruners["k"].final == 0 or layer is cache.layers[-1]
    # independently: relative Frobenius error of per-token top-8 (exact_keep(32, 0.75)) on the pruned tokens
    budget = 8
    errors = []
    for k in keys:
        x = k[0, 0, :n].double()
        kept = x.abs().sort(dim=-1, descending=True).values[:, :budget]
        errors.append(float(((x.square().sum() - kept.square().sum()) / x.square().sum()).sqrt()))
    assert errors[0] < errors[1] < errors[2]
    expected = reference_keeps(errors, budget, exact_keep(32, 0.95), d)
    assert sum(expected) == 3 * budget and len(set(expected)) == 3
    for layer, keep in zip(cache.layers, expected):
        pruner = layer.pruners["k"]
        assert pruner.keeps.tolist() == [[keep]]
        # the layer's measured sparsity is 1 - keep/d
        assert (pruner.kept, pruner.judged) == (n * keep, n * d)
        pruned, _ = layer.dense_view()
        assert torch.equal((pruned[0, 0, :n] != 0).sum(-1), torch.full((n,), keep))
    stats = cache.stats()
    assert stats.k_kept == 3 * n * budget  # the mean kept count is the uniform budget


@pytest.mark.parametrize("bad", ["token inf", "entry inf", "entry nan"])
@pytest.mark.parametrize(
    "allocation, where", [("error", "row 0, layer 1"), ("error_head", "row 0, layer 1, KV head 0")]
)
def test_a_non_finite_prompt_is_named_not_allocated(allocation, where, bad):
    """A prompt whose keys overflowed (a token of inf, one inf entry, one NaN) has non-finite error terms: no
    ranking of the layers follows from them (one inf entry would read as error 0, as the top-k keeps it), so the
    allocation names where they are instead of spreading the budget by them."""
    policy = KVConfig(k_sparsity=0.75, allocation=allocation, window=4)
    keys = three_layer_prompt([10.0, 5.0, 1.0])
    if bad == "token inf":
        keys[1][0, 0, 2] = float("inf")
    else:
        keys[1][0, 0, 2, 3] = float("inf") if bad == "entry inf" else float("nan")
    cache = MustafarCache(policy, num_layers=3)
    for layer, k in zip(cache.layers, keys):
        layer.bound = True
        layer.update(k.clone(), k.clone())
    with pytest.raises(ValueError, match=f"K prefill pruning error at {where} is not finite"):
        for layer in cache.layers:
            layer.after_attention(Observation(q_len=k.shape[2]))


def test_a_layer_list_entry_that_keeps_nothing_is_named():
    from mustafar.attention import check_keep_rules

    with pytest.raises(ConfigError, match=r"kv.k_layer_sparsity\[0\]=0.999 keeps 0 of head_dim=64"):
        check_keep_rules(KVConfig(k_layer_sparsity=[0.999, 0.5]), 64)


def test_static_cache_refuses_an_allocation_it_cannot_make():
    from mustafar.static_cache import StaticMustafarCache

    for allocation in ("error", "error_head"):
        with pytest.raises(ValueError, match=f"kv.allocation={allocation}"):
            StaticMustafarCache(KVConfig(k_sparsity=0.5, allocation=allocation), 2, 64, 64)
    StaticMustafarCache(KVConfig(allocation="error"), 2, 64, 64)  # dense: nothing to allocate


def test_layer_lists_validate_and_set_the_mean():
    policy = KVConfig(k_layer_sparsity=[0.5, 0.9], v_layer_sparsity=(0.7, 0.3))
    assert policy.k_layer_sparsity == (0.5, 0.9) and policy.k_sparsity == pytest.approx(0.7)
    assert policy.layer_rule("k", 1).sparsity == 0.9 and policy.layer_rule("v", 1).sparsity == 0.3
    hash(policy)
    assert KVConfig.from_mapping(policy.to_dict()) == policy
    with pytest.raises(ConfigError, match=r"kv.k_layer_sparsity\[1\]=1.2 is outside \[0, 1\)"):
        KVConfig(k_layer_sparsity=[0.5, 1.2])
    for not_a_list in ({0: 0.9}, {1: 0.5, 0: 0.3}, {0.5, 0.3}, "0.5,0.3"):  # a dict iterated as its keys
        with pytest.raises(ConfigError, match=r"kv.v_layer_sparsity=.* must be a list of sparsities"):
            KVConfig(v_layer_sparsity=not_a_list)
    with pytest.raises(ConfigError, match="mutually exclusive"):
        KVConfig(k_sparsity=0.7, v_layer_sparsity=[0.5, 0.7], allocation="error")
    with pytest.raises(ConfigError, match="disagrees with the mean"):
        KVConfig(k_sparsity=0.5, k_layer_sparsity=[0.7, 0.7])
    with pytest.raises(ConfigError, match="kv.allocation='greedy' is not allowed; choose one of uniform"):
        KVConfig(k_sparsity=0.7, allocation="greedy")
    with pytest.raises(ConfigError, match="needs per-token rules"):
        KVConfig(v_sparsity=0.7, v_direction="channel", allocation="error")
    with pytest.raises(ConfigError, match="needs kv.keep_rule=exact"):
        KVConfig(k_sparsity=0.7, keep_rule="reference", allocation="error_head")
    with pytest.raises(ConfigError, match="kv.k_layer_sparsity has 2 entries but the model has 3 layers"):
        MustafarCache(KVConfig(k_layer_sparsity=[0.5, 0.7]), num_layers=3)
    with pytest.raises(ConfigError, match="kv.v_layer_sparsity has 2 entries but the model has 3 layers"):
        # uniform, so it runs as the uniform policy, and is still checked
        MustafarCache(KVConfig(v_layer_sparsity=[0.5, 0.5]), num_layers=3)


def test_existing_job_ids_do_not_change_and_dense_ignores_the_allocation():
    data = KVConfig(k_sparsity=0.7, v_sparsity=0.7).to_dict()
    assert not {"k_layer_sparsity", "v_layer_sparsity", "allocation"} & set(data)
    assert KVConfig(allocation="error") == KVConfig()
    same = KVConfig(k_layer_sparsity=[0.7, 0.7], v_layer_sparsity=[0.0, 0.0])
    assert same == KVConfig(k_sparsity=0.7) and same.to_dict() == KVConfig(k_sparsity=0.7).to_dict()
    assert KVConfig(k_sparsity=0.7, allocation="error").to_dict()["allocation"] == "error"


def test_dense_ignores_the_window_and_the_keep_rule():
    """Nothing pruned: the window and the keep rule change nothing, so a sweep over them runs its dense point once
    (they stay part of a pruned policy); bad values are still refused."""
    assert (
        KVConfig(window=64) == KVConfig(keep_rule="word") == KVConfig(window=0, keep_rule="nm4") == KVConfig()
    )
    assert KVConfig(evict="snapkv", token_budget=100, window=8) == KVConfig(evict="snapkv", token_budget=100)
    assert KVConfig(k_sparsity=0.5, window=64).window == 64
    assert KVConfig(k_sparsity=0.5, keep_rule="word").keep_rule == "word"
    with pytest.raises(ConfigError, match="kv.window=-1"):
        KVConfig(window=-1)


def test_errors_equal_to_within_rounding_tie_to_the_lower_unit():
    """Hand-worked: errors 0.3, 0.3, 0.6 at budget 14 (N·b = 42) give targets 10.5, 10.5, 21: one entry missing,
    to the lower index of the tie. 0.30000000000000004 is 0.3 one ulp up (an fp64 sum taken in another order) and
    must not win the tie (it once did: [10, 11, 21])."""
    for second in (0.3, 0.30000000000000004):
        errors = torch.tensor([[0.3, second, 0.6]], dtype=torch.float64)
        assert allocate_keeps(errors, 14, 3, 64).tolist() == [[11, 10, 21]]
    distinct = torch.tensor(
        [[0.3, 0.3 * (1 + 1e-9), 0.6]], dtype=torch.float64
    )  # a real difference still counts
    assert allocate_keeps(distinct, 14, 3, 64).tolist() == [[10, 11, 21]]


def test_a_chunked_prompt_is_refused_once_the_keeps_are_decided():
    """The keeps are decided from the first call's errors; a second prompt chunk would be pruned under keeps it
    never informed (eviction refuses the same). Decode steps (one query) go on."""
    policy = KVConfig(k_sparsity=0.75, allocation="error", window=4)
    keys = three_layer_prompt([10.0, 5.0, 1.0])
    cache = MustafarCache(policy, num_layers=3)
    for layer, k in zip(cache.layers, keys):
        layer.bound = True
        layer.update(k.clone(), k.clone())
        layer.after_attention(Observation(q_len=k.shape[2]))
    layer = cache.layers[0]
    layer.update(keys[0][:, :, :1].clone(), keys[0][:, :, :1].clone())
    layer.after_attention(Observation(q_len=1))
    layer.update(keys[0][:, :, :5].clone(), keys[0][:, :, :5].clone())
    with pytest.raises(ValueError, match="kv.allocation=error needs the whole prompt in one call: 5 more"):
        layer.after_attention(Observation(q_len=5))
