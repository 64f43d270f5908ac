"""Static caches against the dynamic ones they replace, step by step, on a tiny random Llama (fp32, CPU).

Teacher-forced: both caches see the same random decode tokens, so logits and the dense view of every layer's
cache are compared after each step without greedy near-ties sending the runs apart.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from mustafar.attention import attach
from mustafar.cache import MustafarCache
from mustafar.config import KVConfig
from mustafar.formats import CompressedStore
from mustafar.graphs import DecodeRunner, greedy
from mustafar.kernels import topk_pack_into
from mustafar.static_cache import (
    StaticCacheError,
    StaticCompressedLayer,
    StaticMaskLayer,
    StaticMustafarCache,
    pack_token_at,
    static_cache,
    unpack_fixed,
)

STEPS = 5


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    """Fallbacks are announced once per process; each test sees its own first time."""
    from mustafar.kernels import support

    monkeypatch.setattr(support, "_WARNED", set())


def _drive(model, cache, prompt: torch.Tensor, feed: torch.Tensor):
    """Prefill `prompt`, then decode the tokens of `feed` [B, n]; logits and per-layer dense views per call."""
    b, t = prompt.shape
    logits, views = [], []
    with torch.inference_mode(), attach(model, cache):
        out = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits.append(out.logits[:, -1].clone())
        views.append([tuple(x.clone() for x in layer.dense_view()) for layer in cache.layers])
        runner = DecodeRunner(model, cache, graphs=False)
        for i in range(feed.shape[1]):
            pos = torch.full((b, 1), t + i, dtype=torch.long)
            logits.append(runner.step(feed[:, i : i + 1], pos).clone())
            views.append([tuple(x.clone() for x in layer.dense_view()) for layer in cache.layers])
    return logits, views


def _inputs(batch: int, prompt_len: int, steps: int, vocab: int = 256):
    g = torch.Generator().manual_seed(1234 + batch + prompt_len)
    prompt = torch.randint(0, vocab, (batch, prompt_len), generator=g)
    feed = torch.randint(0, vocab, (batch, steps), generator=g)
    return prompt, feed


def _assert_same_runs(ref, got) -> None:
    for step, (lr, lg) in enumerate(zip(ref[0], got[0])):
        torch.testing.assert_close(lg, lr, atol=1e-5, rtol=1e-5, msg=f"logits differ at call {step}")
    for step, (vr, vg) in enumerate(zip(ref[1], got[1])):
        for layer, ((kr, vr_), (kg, vg_)) in enumerate(zip(vr, vg)):
            torch.testing.assert_close(
                kg, kr, atol=1e-5, rtol=1e-5, msg=f"K differs: call {step} layer {layer}"
            )
            torch.testing.assert_close(
                vg_, vr_, atol=1e-5, rtol=1e-5, msg=f"V differs: call {step} layer {layer}"
            )


@pytest.mark.parametrize("mode", ["mask", "compressed"])
@pytest.mark.parametrize("window", [0, 32])
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
@pytest.mark.parametrize("batch", [1, 2])
def test_static_equals_dynamic_step_by_step(tiny_llama, mode, window, sparsity, batch):
    policy = KVConfig(k_sparsity=sparsity, v_sparsity=sparsity, window=window, mode=mode)
    prompt, feed = _inputs(batch, 40, STEPS)
    n_layers = tiny_llama.config.num_hidden_layers
    ref = _drive(tiny_llama, MustafarCache(policy, n_layers), prompt, feed)
    cache = static_cache(tiny_llama, policy, prompt.shape[1], STEPS + 1)
    assert isinstance(cache, StaticMustafarCache)
    assert isinstance(cache.layers[0], StaticMaskLayer if mode == "mask" else StaticCompressedLayer)
    got = _drive(tiny_llama, cache, prompt, feed)
    _assert_same_runs(ref, got)
    final = 40 + STEPS - window  # tokens that have left the window: pruned, so the comparison saw zeros
    assert (got[1][-1][0][0][:, :, :final] == 0).float().mean() >= sparsity - 0.01


@pytest.mark.parametrize("mode", ["mask", "compressed"])
def test_static_stats_equal_dynamic(tiny_llama, mode):
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.5, window=32, mode=mode)
    prompt, feed = _inputs(2, 40, 12)
    n_layers = tiny_llama.config.num_hidden_layers
    dynamic = MustafarCache(policy, n_layers)
    _drive(tiny_llama, dynamic, prompt, feed)
    static = static_cache(tiny_llama, policy, 40, 13)
    _drive(tiny_llama, static, prompt, feed)
    ref, got = dynamic.stats(), static.stats()
    assert (got.k_kept, got.k_judged, got.v_kept, got.v_judged) == (
        ref.k_kept,
        ref.k_judged,
        ref.v_kept,
        ref.v_judged,
    )
    assert got.k_judged == 2 * 2 * n_layers * (40 + 12 - 32) * 64  # batch x heads x layers x final tokens x D


@pytest.mark.parametrize(
    "policy",
    [
        KVConfig(k_sparsity=0.7, v_sparsity=0.5, k_scorer="output_aware", v_scorer="output_aware", window=8),
        KVConfig(k_sparsity=0.5, v_sparsity=0.7, k_scorer="output_aware", window=0, keep_rule="reference"),
        KVConfig(k_sparsity=0.7, v_sparsity=0.5, k_scorer="output_aware", window=8, mode="compressed"),
        KVConfig(k_sparsity=0.5, v_sparsity=0.5, k_scorer="output_aware", window=0, mode="compressed"),
    ],
    ids=["mask-kv-w8", "mask-k-w0-reference", "compressed-k-w8", "compressed-k-w0"],
)
def test_output_aware_per_token_equals_dynamic(tiny_llama, policy):
    """Scores averaged over each token's steps in the window, kept per ring slot on the device."""
    prompt, feed = _inputs(2, 12, 10)
    cache = static_cache(tiny_llama, policy, 12, 11)
    assert isinstance(cache, StaticMustafarCache)
    ref = _drive(tiny_llama, MustafarCache(policy, 2), prompt, feed)
    _assert_same_runs(ref, _drive(tiny_llama, cache, prompt, feed))


def test_output_aware_differs_from_magnitude(tiny_llama):
    """The equality above is not magnitude pruning in disguise: the key patterns differ."""
    prompt, feed = _inputs(1, 12, 4)
    oa = KVConfig(k_sparsity=0.7, k_scorer="output_aware", window=2)
    runs = [
        _drive(tiny_llama, static_cache(tiny_llama, p, 12, 5), prompt, feed)
        for p in (oa, KVConfig(k_sparsity=0.7, window=2))
    ]
    assert not torch.equal(runs[0][1][-1][0][0] == 0, runs[1][1][-1][0][0] == 0)


def test_reference_keep_rule_mask_mode(tiny_llama):
    """The published magnitude threshold (ties kept, varying count) also runs statically in mask mode."""
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.7, window=0, keep_rule="reference")
    prompt, feed = _inputs(1, 20, STEPS)
    ref = _drive(tiny_llama, MustafarCache(policy, 2), prompt, feed)
    got = _drive(tiny_llama, static_cache(tiny_llama, policy, 20, STEPS + 1), prompt, feed)
    _assert_same_runs(ref, got)


def test_think_prefill_only_runs_static_in_mask_mode(tiny_llama):
    policy = KVConfig(k_sparsity=0.5, k_scorer="think", v_sparsity=0.5, window=8)
    prompt, feed = _inputs(1, 24, STEPS)
    cache = static_cache(tiny_llama, policy, 24, STEPS + 1)
    assert isinstance(cache, StaticMustafarCache)
    _assert_same_runs(
        _drive(tiny_llama, MustafarCache(policy, 2), prompt, feed), _drive(tiny_llama, cache, prompt, feed)
    )


def test_mask_prompt_shorter_than_window(tiny_llama):
    """Prompt 10, window 32: nothing leaves the window for 22 steps, then one token per step is pruned."""
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.7, window=32, mode="mask")
    prompt, feed = _inputs(2, 10, 28)
    cache = static_cache(tiny_llama, policy, 10, 29)
    assert isinstance(cache, StaticMustafarCache)
    got = _drive(tiny_llama, cache, prompt, feed)
    _assert_same_runs(_drive(tiny_llama, MustafarCache(policy, 2), prompt, feed), got)
    k_last = got[1][-1][0][0]  # 38 tokens: the first 6 have left the window
    assert (k_last[:, :, :6] == 0).any() and not (k_last[:, :, 6:] == 0).any()


def test_compressed_prompt_shorter_than_window_falls_back_once(tiny_llama):
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.7, window=32, mode="compressed")
    with pytest.warns(RuntimeWarning, match="shorter than kv.window=32"):
        cache = static_cache(tiny_llama, policy, 10, 5)
    assert type(cache) is MustafarCache


@pytest.mark.parametrize(
    "fields, reason",
    [
        (dict(k_sparsity=0.5, k_direction="channel"), "channel-magnitude0.5 is not a per-token rule"),
        (dict(v_sparsity=0.5, v_scorer="output_aware", mode="compressed"), "need attention weights"),
        (
            dict(k_sparsity=0.5, mode="compressed", keep_rule="reference"),
            "magnitude threshold keeps a varying",
        ),
    ],
)
def test_unsupported_policies_use_the_dynamic_cache(tiny_llama, fields, reason):
    with pytest.warns(RuntimeWarning, match=reason):
        cache = static_cache(tiny_llama, KVConfig(**fields), 40, 4)
    assert type(cache) is MustafarCache


def test_dense_static_equals_stock_greedy_generation(tiny_llama):
    prompt, _ = _inputs(2, 17, 0)
    stock = tiny_llama.generate(
        prompt, max_new_tokens=10, do_sample=False, attention_mask=torch.ones_like(prompt)
    )
    tokens, _, cache = greedy(tiny_llama, KVConfig(), prompt, 10, static=True, graphs=False)
    assert isinstance(cache, StaticMustafarCache)
    assert torch.equal(tokens, stock[:, 17:])


def test_capacity_is_enforced(tiny_llama):
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4)
    prompt, feed = _inputs(1, 8, 3)
    cache = static_cache(tiny_llama, policy, 8, 2)  # room for 2 decode tokens
    with pytest.raises(StaticCacheError, match="capacity 10 exceeded"):
        _drive(tiny_llama, cache, prompt, feed)


def test_graphs_on_cpu_fall_back_to_eager_once(tiny_llama):
    cache = static_cache(tiny_llama, KVConfig(), 8, 4)
    with pytest.warns(RuntimeWarning, match="CUDA graphs need a CUDA device"):
        runner = DecodeRunner(tiny_llama, cache, graphs=True)
    assert not runner.captured


@pytest.mark.parametrize("keep", [19, 64])
def test_pack_token_at_equals_topk_pack(keep):
    g = torch.Generator().manual_seed(7)
    rows = torch.randn(2, 3, 5, 64, generator=g)
    rows[0, 0, 0, :8] = 1.0  # ties go to the lower channel in both
    ref = CompressedStore(2, 3, 64, torch.float32, "cpu", keep=keep)
    topk_pack_into(ref, rows, keep, "torch")
    got = CompressedStore(2, 3, 64, torch.float32, "cpu", keep=keep, capacity=8)
    for t in (3, 0, 4, 1, 2):  # any order: the slot index is data
        pack_token_at(got, rows[:, :, t : t + 1], keep, torch.tensor([t]))
    torch.testing.assert_close(unpack_fixed(got)[:, :, :5], ref.to_dense(), atol=0, rtol=0)
    assert torch.equal(got.bits[:, :, :5], ref.bits[:, :, :5])


@pytest.mark.parametrize(
    "policy",
    [
        KVConfig(),
        KVConfig(k_sparsity=0.7, v_sparsity=0.5, window=4),
        KVConfig(k_sparsity=0.7, v_sparsity=0.7, window=4, keep_rule="reference"),
        KVConfig(k_sparsity=0.7, v_sparsity=0.5, window=4, mode="compressed"),
        KVConfig(k_sparsity=0.7, v_sparsity=0.5, k_scorer="output_aware", v_scorer="output_aware", window=4),
        KVConfig(k_sparsity=0.7, v_sparsity=0.5, k_scorer="output_aware", window=4, mode="compressed"),
        KVConfig(
            k_sparsity=0.5, v_sparsity=0.5, k_keep_rule="nm8c", v_keep_rule="nm4", window=4, mode="compressed"
        ),
    ],
    ids=[
        "dense",
        "mask",
        "mask-reference",
        "compressed",
        "mask-output-aware",
        "compressed-output-aware",
        "compressed-calibrated",
    ],
)
def test_decode_step_is_capturable(tiny_llama, monkeypatch, policy):
    """What graph capture needs of the whole model step, checked on the CPU: no host read of a device value
    (.item(), bool(), int(): a sync on a GPU), no boolean-mask indexing (data-dependent shapes, a sync too), and
    the cache's buffers keep their addresses (a graph replays fixed addresses)."""
    prompt, feed = _inputs(2, 12, 3)
    cache = static_cache(tiny_llama, policy, 12, 4)
    with torch.inference_mode(), attach(tiny_llama, cache):
        tiny_llama(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        runner = DecodeRunner(tiny_llama, cache, graphs=False)
        before = _buffer_addresses(cache)
        _forbid_host_reads(monkeypatch)
        for i in range(3):
            runner.step(feed[:, i : i + 1], torch.full((2, 1), 12 + i))
        monkeypatch.undo()
    assert _buffer_addresses(cache) == before
    assert int(cache.layers[0].length) == 15


def test_capturability_check_rejects_the_dynamic_caches(tiny_llama, monkeypatch):
    """The check above can fail: the dynamic compressed cache packs with boolean indexing and regrows."""
    prompt, feed = _inputs(2, 12, 1)
    cache = MustafarCache(KVConfig(k_sparsity=0.7, v_sparsity=0.5, window=4, mode="compressed"), 2)
    with torch.inference_mode(), attach(tiny_llama, cache):
        tiny_llama(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        _forbid_host_reads(monkeypatch)
        with pytest.raises(AssertionError, match="boolean-mask indexing"):
            DecodeRunner(tiny_llama, cache, graphs=False).step(feed, torch.full((2, 1), 12))


def _forbid_host_reads(monkeypatch) -> None:
    def host_read(*args, **kwargs):
        raise AssertionError("a decode step read a device value on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    for name in ("__getitem__", "__setitem__"):
        original = getattr(torch.Tensor, name)

        def checked(self, index, *rest, _original=original):
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                raise AssertionError("a decode step used boolean-mask indexing")
            return _original(self, index, *rest)

        monkeypatch.setattr(torch.Tensor, name, checked)


def _buffer_addresses(cache) -> list[int]:
    out = []
    for layer in cache.layers:
        for value in vars(layer).values():
            if isinstance(value, torch.Tensor):
                out.append(value.data_ptr())
        for store in getattr(layer, "stores", {}).values():
            out += [store.bits.data_ptr(), store.vals.data_ptr()]
    return out


def test_fallback_is_announced_once(tiny_llama):
    policy = KVConfig(k_sparsity=0.5, k_direction="channel")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            static_cache(tiny_llama, policy, 40, 4)
    assert sum("static cache unavailable" in str(w.message) for w in seen) == 1


@pytest.mark.parametrize(
    "fields,blocked",
    [
        (dict(k_sparsity=0.7, v_sparsity=0.7), None),
        (dict(k_sparsity=0.7, v_sparsity=0.7, keep_rule="word"), None),
        (dict(k_sparsity=0.5, k_scorer="output_aware"), "output-aware keys"),
    ],
)
def test_capture_blocker_judges_a_cache_before_its_prompt(monkeypatch, fields, blocked):
    """A runner is built before the prompt allocates the layers' stores (one cache per capacity bucket): the
    verdict comes from the policy, as the stores will be on a CUDA device with the Triton kernels."""
    import mustafar.static_cache as sc

    monkeypatch.setattr(sc, "resolve_backend", lambda backend, device, head_dim: "triton")
    monkeypatch.setattr(sc, "_stores_count_on_device", lambda: True)
    cache = sc.StaticMustafarCache(
        KVConfig(mode="compressed", **fields), num_layers=2, capacity=64, head_dim=64
    )
    reason = sc.capture_blocker(cache, torch.device("cuda"))
    assert reason is None if blocked is None else blocked in reason
