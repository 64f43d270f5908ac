"""`kv.keep_rule=word` inside a real model (tiny random Llama, fp32, CPU): compressed mode equals mask mode, for
the dynamic and the static caches, batch 1 and left-padded batch 2, on the PyTorch backend and with the Triton
kernels under the interpreter; every stored token keeps exactly the word quotas."""

from __future__ import annotations

import warnings

import pytest
import torch

from mustafar.attention import attach
from mustafar.cache import MustafarCache
from mustafar.config import KVConfig
from mustafar.generation import generate
from mustafar.graphs import DecodeRunner
from mustafar.pruning import word_topk_mask
from mustafar.runner_pool import release
from mustafar.static_cache import StaticCompressedLayer, StaticMustafarCache, static_cache, static_reason
from tests.unit.test_static_cache import _buffer_addresses, _forbid_host_reads

WORD = [
    KVConfig(k_sparsity=0.7, v_sparsity=0.7, keep_rule="word"),
    KVConfig(k_sparsity=0.5, v_sparsity=0.7, keep_rule="word", window=0),
    KVConfig(k_sparsity=0.5, v_sparsity=0.5, k_scorer="output_aware", keep_rule="word", window=8),
    KVConfig(k_sparsity=0.7, keep_rule="word", window=8),  # V dense: its stores stay plain
]
LENGTHS = (37, 70)  # left pads 33 and 0 in one batch
BUDGETS = (6, 9)


def _id(policy: KVConfig) -> str:
    return f"{policy.label()}-w{policy.window}".replace(" ", "_")


def prompts(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 256, (n,), generator=g).tolist() for n in lengths]


def check_stores(cache, policy: KVConfig) -> int:
    """Every pruned side's stores hold word quotas and every stored token keeps them; returns tokens checked."""
    checked = 0
    for layer in cache.layers:
        for side in ("k", "v"):
            store = layer.stores[side]
            assert store.word_quota == getattr(policy, side).active
            if store.word_quota:
                # a static layer counts each row's stored tokens (its own real ones) in `stored`
                rows = (
                    layer.stored.tolist() if isinstance(layer, StaticCompressedLayer) else store.row_lengths()
                )
                store.check_word_counts(rows)
                checked += sum(rows)
    return checked


def assert_same_outputs(ref, got):
    for r, g in zip(ref, got, strict=True):
        assert g.tokens == r.tokens
        for c in ("k_kept", "k_judged", "v_kept", "v_judged"):
            assert getattr(g.stats, c) == getattr(r.stats, c)


def compressed_matches_mask(model, policy: KVConfig, lengths, budgets):
    """Generate `lengths`' prompts with the dynamic cache in mask mode and in compressed mode; assert equal tokens
    and kept counts; return the compressed cache and the prompts' outputs in mask mode."""
    ps = prompts(lengths)
    masked = generate(model, policy, ps, budgets, static=False)
    compressed_policy = KVConfig(**{**policy.to_dict(), "mode": "compressed"})
    cache = MustafarCache(compressed_policy, model.config.num_hidden_layers)
    compressed = generate(model, compressed_policy, ps, budgets, cache=cache, static=False)
    assert_same_outputs(masked, compressed)
    return cache, masked


@pytest.mark.parametrize("policy", WORD, ids=_id)
@pytest.mark.parametrize("lengths", [LENGTHS[1:], LENGTHS], ids=["batch1", "batch2-padded"])
def test_dynamic_compressed_equals_mask_mode(tiny_llama, policy, lengths):
    budgets = list(BUDGETS[-len(lengths) :])
    cache, masked = compressed_matches_mask(tiny_llama, policy, lengths, budgets)
    assert check_stores(cache, policy) > 0
    ps = prompts(lengths)
    exact = generate(
        tiny_llama, KVConfig(**{**policy.to_dict(), "keep_rule": "exact"}), ps, budgets, static=False
    )
    assert [o.stats.k_kept for o in exact] == [o.stats.k_kept for o in masked]  # the same count per token


def _drive(model, cache, prompt: torch.Tensor, feed: torch.Tensor):
    """Prefill `prompt`, then teacher-force `feed` [B, n]; logits and every layer's logical cache per call."""
    b, t = prompt.shape
    logits, views = [], []
    with torch.inference_mode(), attach(model, cache):
        out = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits.append(out.logits[:, -1].clone())
        views.append([tuple(x.clone() for x in layer.dense_view()) for layer in cache.layers])
        runner = DecodeRunner(model, cache, graphs=False)
        for i in range(feed.shape[1]):
            logits.append(runner.step(feed[:, i : i + 1], torch.full((b, 1), t + i)).clone())
            views.append([tuple(x.clone() for x in layer.dense_view()) for layer in cache.layers])
    return logits, views


def static_matches_dynamic(model, policy: KVConfig, under: KVConfig, batch: int):
    """Drive a 40-token prompt and 5 fed tokens through the dynamic cache of `policy` and a static cache of `under`;
    assert each call's logits and every layer's logical K and V agree; return (static cache, its drive)."""
    g = torch.Generator().manual_seed(7 + batch)
    prompt, feed = (
        torch.randint(0, 256, (batch, 40), generator=g),
        torch.randint(0, 256, (batch, 5), generator=g),
    )
    ref = _drive(model, MustafarCache(policy, model.config.num_hidden_layers), prompt, feed)
    assert static_reason(model, under, 40) is None
    cache = static_cache(model, under, 40, 6)
    assert isinstance(cache, StaticMustafarCache)
    got = _drive(model, cache, prompt, feed)
    assert_same_drive(ref, got)
    return cache, got


def assert_same_drive(ref, got) -> None:
    """Two `_drive` results agree: each call's logits and every layer's logical K and V after it."""
    for step, (lr, lg) in enumerate(zip(ref[0], got[0], strict=True)):
        torch.testing.assert_close(lg, lr, atol=1e-5, rtol=1e-5, msg=f"logits differ at call {step}")
    for views_ref, views_got in zip(ref[1], got[1], strict=True):
        for (kr, vr), (kg, vg) in zip(views_ref, views_got, strict=True):
            torch.testing.assert_close(kg, kr, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(vg, vr, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["mask", "compressed"])
@pytest.mark.parametrize("policy", WORD[:3], ids=_id)
@pytest.mark.parametrize("batch", [1, 2])
def test_static_equals_dynamic_step_by_step(tiny_llama, mode, policy, batch):
    policy = KVConfig(**{**policy.to_dict(), "mode": mode})
    cache, got = static_matches_dynamic(tiny_llama, policy, policy, batch)
    # the pruned tokens of the final logical cache follow the word rule (magnitude sides: from the values alone)
    final = 40 + 5 - policy.window
    k = got[1][-1][0][0][:, :, :final]
    if policy.k_scorer == "magnitude":
        assert torch.equal(k != 0, word_topk_mask(k.abs(), 38 if policy.k_sparsity == 0.7 else 32) & (k != 0))
        assert ((k != 0).sum(-1) <= (38 if policy.k_sparsity == 0.7 else 32)).all()
    if mode == "compressed":
        assert check_stores(cache, policy) > 0


@pytest.mark.parametrize("mode", ["mask", "compressed"])
@pytest.mark.parametrize("policy", WORD[:3], ids=_id)
def test_word_decode_step_is_capturable(tiny_llama, monkeypatch, mode, policy):
    """The word selection inside a static decode step reads nothing on the host, indexes with no boolean mask and
    keeps every buffer in place (what a CUDA graph needs; the check of tests/unit/test_static_cache.py)."""
    policy = KVConfig(**{**policy.to_dict(), "mode": mode, "window": 4})
    g = torch.Generator().manual_seed(11)
    prompt, feed = torch.randint(0, 256, (2, 12), generator=g), torch.randint(0, 256, (2, 3), generator=g)
    cache = static_cache(tiny_llama, policy, 12, 4)
    with torch.inference_mode(), attach(tiny_llama, cache):
        tiny_llama(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        runner = DecodeRunner(tiny_llama, cache, graphs=False)
        before = _buffer_addresses(cache)
        _forbid_host_reads(monkeypatch)
        real_tensor = torch.tensor
        monkeypatch.setattr(
            torch, "tensor", lambda *a, **kw: pytest.fail("torch.tensor: a host-to-device copy")
        )
        for i in range(3):
            runner.step(feed[:, i : i + 1], torch.full((2, 1), 12 + i))
        monkeypatch.undo()
    assert torch.tensor is real_tensor
    assert _buffer_addresses(cache) == before


@pytest.mark.parametrize("policy", WORD[:3], ids=_id)
def test_static_padded_batch_equals_mask_mode_and_each_row_alone(tiny_llama, policy):
    """A left-padded static compressed batch: the same tokens and counts as mask mode (dynamic) and as each row
    alone, pads never stored, every row's stored tokens in quota."""
    release(tiny_llama)
    ps = prompts()
    compressed = KVConfig(**{**policy.to_dict(), "mode": "compressed"})
    widest, shortest = max(map(len, ps)), min(map(len, ps))
    cache = static_cache(tiny_llama, compressed, widest, max(BUDGETS), padded=True, shortest=shortest)
    assert isinstance(cache.layers[0], StaticCompressedLayer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the dynamic cache
        batch = generate(tiny_llama, compressed, ps, list(BUDGETS), cache=cache)
    assert_same_outputs(generate(tiny_llama, policy, ps, list(BUDGETS), static=False), batch)
    assert check_stores(cache, policy) > 0
    for p, n, got in zip(ps, BUDGETS, batch, strict=True):
        alone = generate(tiny_llama, compressed, [p], n, static=True)[0]
        assert got.tokens == alone.tokens
        counts = ("k_kept", "k_judged", "v_kept", "v_judged", "dense_bytes", "kv_payload_bytes")
        assert [getattr(got.stats, c) for c in counts] == [getattr(alone.stats, c) for c in counts]


@pytest.mark.slow
@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize(
    "policy",
    [
        KVConfig(k_sparsity=0.7, v_sparsity=0.5, keep_rule="word", window=8),
        KVConfig(
            k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", v_keep_rule="nm4", window=8
        ),  # V 2:4 groups
        KVConfig(
            k_sparsity=0.7, v_sparsity=0.6875, keep_rule="word", v_keep_rule="nm16", window=8
        ),  # V 5:16 groups
    ],
    ids=["word", "word-v-nm4", "word-v-nm16"],
)
def test_triton_kernels_equal_mask_mode(tiny_llama, monkeypatch, static, policy):
    """The Triton per-word (and per-group) prune+pack (static: at each padded row's own device count) and the
    sparse decode op, interpreted on the CPU, give mask mode's tokens; the stores keep the quotas."""
    import mustafar.static_cache as sc

    release(tiny_llama)
    monkeypatch.setenv("MUSTAFAR_KERNEL_BACKEND", "triton")
    compressed = KVConfig(**{**policy.to_dict(), "mode": "compressed"})
    ps, budgets = prompts((13, 30), seed=3), [3, 4]
    cache = (
        static_cache(tiny_llama, compressed, 30, 4, padded=True, shortest=13)
        if static
        else MustafarCache(compressed, tiny_llama.config.num_hidden_layers)
    )
    if static:
        calls = []
        real = sc.sparse_decode_attention
        monkeypatch.setattr(sc, "sparse_decode_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    got = generate(tiny_llama, compressed, ps, budgets, cache=cache, static=None if static else False)
    assert_same_outputs(generate(tiny_llama, policy, ps, budgets, static=False), got)
    assert check_stores(cache, policy) > 0
    if static:
        assert cache.layers[0].device_stores  # the Triton pack wrote at the per-row device counts
        counts = cache.layers[0].stores["k"].length_tensor.tolist()
        assert calls and counts[1] - counts[0] == 30 - 13  # each row stores its own real tokens
