"""The harness's batching: a task's records and statistics do not depend on benchmark.batch_size."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from eval.common import Sample
from eval.runner import GenerationStats, generate_task
from mustafar.config import KVConfig


class Tokens:
    """A tokenizer stand-in: decoding lists the ids, so records show the exact tokens."""

    pad_token_id = None
    eos_token_id = 3

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i == self.eos_token_id))


def samples():
    g = torch.Generator().manual_seed(4)
    lengths, budgets = (60, 33, 90, 41, 75), (6, 3, 8, 5, 2)
    return [
        Sample("t", i, torch.randint(4, 256, (n,), generator=g).tolist(), m, ["x"], min_new_tokens=1)
        for i, (n, m) in enumerate(zip(lengths, budgets))
    ]


def test_records_and_stats_do_not_depend_on_batch_size(tiny_llama):
    loaded = SimpleNamespace(model=tiny_llama, tokenizer=Tokens())
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, v_direction="channel", window=16)
    runs = {}
    for batch_size in (1, 3):
        stats = GenerationStats()
        records = generate_task(loaded, policy, samples(), stats, desc="t", batch_size=batch_size)
        runs[batch_size] = (records, stats)
    (one, s1), (three, s3) = runs[1], runs[3]
    assert [r["index"] for r in three] == list(range(5))  # sample order restored after sorting by length
    for a, b in zip(one, three):
        assert a == b
    assert s1.cache == s3.cache
    assert (
        (s1.prompt_tokens, s1.new_tokens)
        == (s3.prompt_tokens, s3.new_tokens)
        == (
            60 + 33 + 90 + 41 + 75,
            sum(r["new_tokens"] for r in one),
        )
    )
    kept = s1.cache.k_kept
    assert s1.measured("mask")["k_sparsity_measured"] == round(1 - kept / s1.cache.k_judged, 4) == 0.5
    assert all(r["k_sparsity_measured"] == 0.5 for r in one)  # exact keep: every sample prunes half of K
    # the rows carry the judged counts (eviction_table prices caches with them): twice the kept at s 0.5
    assert s1.measured("mask")["k_judged"] == 2 * kept > 0


def test_stats_round_trip_through_json(tiny_llama):
    import json

    stats = GenerationStats()
    generate_task(
        SimpleNamespace(model=tiny_llama, tokenizer=Tokens()),
        KVConfig(k_sparsity=0.5),
        samples()[:2],
        stats,
        "t",
        2,
    )
    back = GenerationStats(**json.loads(json.dumps(stats.to_dict())))
    assert back == stats
    total = GenerationStats()
    total.add(back)
    total.add(back)
    assert total.cache.k_kept == 2 * stats.cache.k_kept and total.new_tokens == 2 * stats.new_tokens
