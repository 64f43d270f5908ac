"""The `word` keep rule: masks against a per-element Python reference, the policy's refusals, the pruners, and the
word-quota stores (their invariant check, the PyTorch and the Triton-interpreted per-word top-k pack, static
stores with one device count per batch row)."""

from __future__ import annotations

import pytest
import torch

from mustafar.config import ConfigError, KVConfig, PruneRule
from mustafar.formats import CompressedStore
from mustafar.kernels import pack_into, topk_pack_into
from mustafar.pruning import (
    Observation,
    SidePruner,
    exact_keep,
    keep_mask,
    topk_mask,
    word_quotas,
    word_topk_mask,
)
from mustafar.static_cache import unpack_fixed


def hand_word_mask(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Per element: in each 32-entry word g of a row, keep the q_g highest scores, ties to the lower index, with
    q_g = keep // W (+1 for the first keep % W words), W = D / 32."""
    flat = score.reshape(-1, score.shape[-1]).tolist()
    d = score.shape[-1]
    words = d // 32
    out = []
    for row in flat:
        kept = [False] * d
        for g in range(words):
            quota = keep // words + (1 if g < keep % words else 0)
            channels = sorted(range(32 * g, 32 * g + 32), key=lambda c: (-row[c], c))
            for c in channels[:quota]:
                kept[c] = True
        out.append(kept)
    return torch.tensor(out).view(score.shape)


def test_word_quotas_by_hand():
    assert word_quotas(128, 38) == (10, 10, 9, 9)
    assert word_quotas(128, 64) == (16, 16, 16, 16)
    assert word_quotas(64, 19) == (10, 9)
    assert word_quotas(128, 3) == (1, 1, 1, 0)  # a word may keep nothing
    assert sum(word_quotas(128, exact_keep(128, 0.7))) == 38


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("keep", [1, 3, 19, 38, 64])
@pytest.mark.parametrize("data", ["gauss", "ties"])
def test_word_mask_equals_the_hand_loop(head_dim, keep, data):
    g = torch.Generator().manual_seed(head_dim + keep)
    if data == "ties":  # few distinct values: most words tie at their threshold
        score = torch.randint(0, 4, (3, 2, 5, head_dim), generator=g).float()
        score[0, 0, 0] = 1.0  # a row of equal scores: the lowest channels of every word win
    else:
        score = torch.randn(3, 2, 5, head_dim, generator=g).abs()
    mask = word_topk_mask(score, keep)
    assert torch.equal(mask, hand_word_mask(score, keep))
    assert (mask.sum(-1) == keep).all()
    if data == "ties":
        expected = torch.zeros(head_dim, dtype=torch.bool)
        for w, q in enumerate(word_quotas(head_dim, keep)):
            expected[32 * w : 32 * w + q] = True
        assert torch.equal(mask[0, 0, 0], expected)


def test_keep_mask_word_keeps_exacts_count_in_other_places():
    score = torch.randn(2, 2, 50, 128, generator=torch.Generator().manual_seed(0)).abs()
    word = keep_mask(score, 0.7, "word", thresholded=True)
    exact = keep_mask(score, 0.7, "exact", thresholded=True)
    assert torch.equal(word, hand_word_mask(score, 38))
    assert (word.sum(-1) == 38).all() and (exact.sum(-1) == 38).all()
    assert not torch.equal(word, exact)  # the quotas bind on Gaussian rows
    assert torch.equal(keep_mask(score, 0.0, "word", thresholded=True), torch.ones_like(word))
    with pytest.raises(ValueError, match="multiple of 32 entries"):
        keep_mask(torch.rand(1, 1, 2, 80), 0.5, "word", thresholded=True)


def test_policy_label_and_job_identity():
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.7, keep_rule="word")
    assert policy.label() == "K0.7 V0.7 word"
    assert policy.to_dict()["keep_rule"] == "word"
    assert KVConfig(k_sparsity=0.7, v_sparsity=0.7).to_dict() != policy.to_dict()
    # output-aware per-token rules and a dense side are allowed; a dense side's direction is moot
    KVConfig(
        k_sparsity=0.5, k_scorer="output_aware", v_sparsity=0.5, v_scorer="output_aware", keep_rule="word"
    )
    KVConfig(v_sparsity=0.5, k_direction="channel", keep_rule="word")


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"k_sparsity": 0.5, "k_scorer": "think"}, "kv.k_direction='channel' (kv.k_scorer='think')"),
        ({"v_sparsity": 0.7, "v_direction": "channel"}, "kv.v_direction='channel' (kv.v_scorer='magnitude')"),
        (
            {"v_sparsity": 0.7, "v_direction": "channel", "v_scorer": "output_aware"},
            "kv.v_direction='channel' (kv.v_scorer='output_aware')",
        ),
    ],
)
def test_word_refuses_rules_without_per_token_words(fields, named):
    with pytest.raises(ConfigError) as err:
        KVConfig(keep_rule="word", **fields)
    assert named in str(err.value) and "kv.keep_rule='word'" in str(err.value)
    assert "magnitude or output_aware" in str(err.value)


def test_bad_keep_rule_names_the_allowed_values():
    with pytest.raises(
        ConfigError, match="kv.keep_rule='words' is not allowed; choose one of exact, reference, word"
    ):
        KVConfig(keep_rule="words")


@pytest.mark.parametrize("scorer", ["magnitude", "output_aware"])
def test_side_pruner_counts_and_fused_pack(scorer):
    pruner = SidePruner(PruneRule(0.7, "token", scorer), "k", "word", window=0)
    assert pruner.keep_for(128) == 38
    assert pruner.packs_topk == (scorer == "magnitude")
    tail = torch.randn(1, 2, 6, 128, generator=torch.Generator().manual_seed(1))
    obs = Observation(q_len=6, query_stat=torch.rand(1, 2, 128))
    n, mask = pruner.step(tail, obs)
    assert n == 6
    score = tail.abs() if scorer == "magnitude" else tail.abs() * obs.query_stat.unsqueeze(2)
    assert torch.equal(mask, hand_word_mask(score, 38))
    assert pruner.kept == 6 * 2 * 38 and pruner.judged == 6 * 2 * 128


def test_store_quotas_and_the_invariant_check():
    rows = torch.randn(2, 2, 7, 128, generator=torch.Generator().manual_seed(2))
    good = CompressedStore(2, 2, 128, torch.float32, "cpu", 38, word_quota=True)
    assert good.quotas == (10, 10, 9, 9)
    pack_into(good, rows, word_topk_mask(rows.abs(), 38), "torch")
    good.check_word_counts()
    bad = CompressedStore(2, 2, 128, torch.float32, "cpu", 38, word_quota=True)
    pack_into(
        bad, rows, topk_mask(rows.abs(), 38), "torch"
    )  # right total, wrong split: the check must see it
    with pytest.raises(ValueError, match=r"entries per word; the store's quotas are \[10, 10, 9, 9\]"):
        bad.check_word_counts()
    plain = CompressedStore(2, 2, 128, torch.float32, "cpu", 38)
    assert plain.quotas is None
    with pytest.raises(ValueError, match="holds no word quotas"):
        plain.check_word_counts()
    with pytest.raises(ValueError, match="fixed layout"):
        CompressedStore(1, 1, 128, torch.float32, "cpu", None, word_quota=True)


def _rows(dtype, head_dim, n=11, seed=0):
    g = torch.Generator().manual_seed(seed + head_dim)
    rows = torch.randn(2, 2, n, head_dim, generator=g)
    rows[0, 0, 0] = 1.0  # all tied
    rows[1, 1, 2, : head_dim // 2] = -0.5  # ties of mixed sign
    rows[1, 0, 3] = 0.0
    return rows.to(dtype)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim, keep", [(64, 19), (64, 32), (128, 38), (128, 3)])
def test_topk_pack_into_word_store_packs_the_word_pattern(backend, dtype, head_dim, keep):
    rows = _rows(dtype, head_dim)
    store = CompressedStore(2, 2, head_dim, dtype, "cpu", keep, word_quota=True)
    topk_pack_into(store, rows[:, :, :5], keep, backend)  # two appends
    topk_pack_into(store, rows[:, :, 5:], keep, backend)
    ref = rows.masked_fill(~hand_word_mask(rows.abs().float(), keep), 0)
    assert torch.equal(store.to_dense(), ref)
    store.check_word_counts()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_topk_pack_into_plain_store_is_unchanged(backend):
    rows = _rows(torch.float16, 128)
    store = CompressedStore(2, 2, 128, torch.float16, "cpu", 38)
    topk_pack_into(store, rows, 38, backend)
    assert torch.equal(store.to_dense(), rows.masked_fill(~topk_mask(rows.abs().float(), 38), 0))


def test_triton_word_pack_at_per_row_device_counts():
    """Static stores count tokens per batch row on the device; the per-word pack appends each row at its own
    count and advances both (engine2's padded rows)."""
    rows = _rows(torch.float16, 64, n=6, seed=5)
    store = CompressedStore(2, 2, 64, torch.float16, "cpu", 19, capacity=12, static=True, word_quota=True)
    topk_pack_into(store, rows[:, :, :4], 19, "triton")  # both rows: slots 0..3
    store.length_tensor.copy_(torch.tensor([4, 2], dtype=torch.int32))  # row 1 keeps only its first 2 tokens
    topk_pack_into(store, rows[:, :, 4:], 19, "triton")
    assert store.length_tensor.tolist() == [6, 4]
    store.check_word_counts()
    dense = unpack_fixed(store)  # the whole capacity: row 1's tokens 4, 5 sit at its slots 2, 3
    ref = rows.masked_fill(~hand_word_mask(rows.abs().float(), 19), 0)
    assert torch.equal(dense[0, :, :6], ref[0])
    assert torch.equal(dense[1, :, :2], ref[1, :, :2])
    assert torch.equal(dense[1, :, 2:4], ref[1, :, 4:6])
