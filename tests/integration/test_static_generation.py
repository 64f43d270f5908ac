"""`mustafar.generate(static=True)` (a static cache, eager steps on a CPU) equals the dynamic path: the same greedy
tokens and the same per-row measured sparsity, for a left-padded batch and for each prompt alone."""

from __future__ import annotations

import warnings

import pytest
import torch

from mustafar.config import KVConfig
from mustafar.generation import generate
from mustafar.static_cache import StaticMustafarCache, static_reason

LENGTHS = (37, 70, 101)  # pads 64, 31 and 0 in one batch
BUDGETS = (9, 4, 12)  # different stop points per row


def prompts(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 256, (n,), generator=g).tolist() for n in lengths]


def assert_same(dynamic, static):
    for d, s in zip(dynamic, static, strict=True):
        assert s.tokens == d.tokens
        assert s.stopped_by == d.stopped_by
        assert s.stats == d.stats


POLICIES = [
    KVConfig(),
    KVConfig(k_sparsity=0.5, v_sparsity=0.5),
    KVConfig(k_sparsity=0.7, v_sparsity=0.7, window=0),
    KVConfig(k_sparsity=0.7, v_sparsity=0.7, k_scorer="output_aware", v_scorer="output_aware"),
    KVConfig(k_sparsity=0.7, v_sparsity=0.5, value_dtype="fp8"),
    KVConfig(k_sparsity=0.5, k_scorer="output_aware", value_dtype="fp8", window=8),
    KVConfig(k_layer_sparsity=(0.7, 0.0), v_layer_sparsity=(0.5, 0.0), value_dtype="fp8"),  # layer 1 unpruned
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.label()}-w{p.window}")
def test_static_padded_batch_equals_dynamic(tiny_llama, policy):
    ps = prompts()
    dynamic = generate(tiny_llama, policy, ps, list(BUDGETS), static=False)
    assert policy.dense or any(d.stats.k_judged for d in dynamic)  # pruning was measured
    assert_same(dynamic, generate(tiny_llama, policy, ps, list(BUDGETS), static=True))


def test_static_batch_of_one_equals_dynamic(tiny_llama):
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.7)
    for p, n in zip(prompts(), BUDGETS):
        assert_same(
            generate(tiny_llama, policy, [p], n, static=False),
            generate(tiny_llama, policy, [p], n, static=True),
        )


def test_static_stop_ids_snapshot_each_row_at_its_stop(tiny_llama):
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5)
    ps = prompts()
    free = generate(tiny_llama, policy, ps, 12, static=False)
    stop = free[0].tokens[2]  # row 0 stops early, the others run on
    dynamic = generate(tiny_llama, policy, ps, 12, stop_ids=[stop], static=False)
    assert dynamic[0].stopped_by == "stop_id"
    assert_same(dynamic, generate(tiny_llama, policy, ps, 12, stop_ids=[stop], static=True))


def test_static_compressed_unpadded_equals_dynamic(tiny_llama):
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, mode="compressed")
    ps = prompts((70, 70))
    dynamic = generate(tiny_llama, policy, ps, 10, static=False)
    static = generate(tiny_llama, policy, ps, 10, static=True)
    for d, s in zip(dynamic, static, strict=True):
        assert s.tokens == d.tokens
        counts = ("k_kept", "k_judged", "v_kept", "v_judged", "dense_bytes")
        assert [getattr(s.stats, c) for c in counts] == [getattr(d.stats, c) for c in counts]


def test_static_dense_compressed_reports_bytes_as_dynamic(tiny_llama):
    """A dense policy in compressed mode stores every token dense on both paths: the static one reports the same
    payload bytes per row as the dynamic one (real tokens only: a padded row's pads left out) and its allocated
    buffers as kv_bytes, not None; mask mode reports no bytes on either."""
    ps = prompts((37, 70))
    cfg = tiny_llama.config
    for mode in ("compressed", "mask"):
        policy = KVConfig(mode=mode)
        dynamic = generate(tiny_llama, policy, ps, 6, static=False)
        static = generate(tiny_llama, policy, ps, 6, static=True)
        for d, s, p in zip(dynamic, static, ps, strict=True):
            assert s.tokens == d.tokens
            if mode == "mask":
                assert s.stats.kv_payload_bytes is d.stats.kv_payload_bytes is None
                continue
            per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * 64 * 4  # K and V, fp32, D 64
            assert s.stats.kv_payload_bytes == d.stats.kv_payload_bytes == (len(p) + 5) * per_token
    alone = generate(tiny_llama, KVConfig(mode="compressed"), ps[:1], 6, static=True)[0]
    assert alone.stats.kv_bytes == 256 * per_token  # one row: the 256-token bucket, allocated


def test_static_think_keys_unpadded_equal_dynamic(tiny_llama):
    policy = KVConfig(k_sparsity=0.7, k_scorer="think", v_sparsity=0.5)
    ps = prompts((70, 70), seed=1)
    assert static_reason(tiny_llama, policy, 70) is None
    dynamic = generate(tiny_llama, policy, ps, [8, 5], static=False)
    assert dynamic[0].stats.k_judged > 0
    assert_same(dynamic, generate(tiny_llama, policy, ps, [8, 5], static=True))


@pytest.mark.parametrize(
    "policy, lengths, reason",
    [
        (KVConfig(k_sparsity=0.5, k_scorer="think"), LENGTHS, "padded row separately"),
        (  # row 0 (20 tokens) is shorter than the window: its window would hold pads, which the sparse op attends
            KVConfig(k_sparsity=0.5, v_sparsity=0.5, mode="compressed"),
            (20, 70, 101),
            "shortest row's prompt (20 tokens) is shorter than kv.window=32",
        ),
    ],
    ids=["think", "compressed-row-shorter-than-window"],
)
def test_out_of_scope_padding_falls_back_to_the_dynamic_cache(tiny_llama, policy, lengths, reason):
    width, shortest = max(lengths), min(lengths)
    assert static_reason(tiny_llama, policy, width) is None
    assert reason in static_reason(tiny_llama, policy, width, padded=True, shortest=shortest)
    ps = prompts(lengths)
    with pytest.warns(RuntimeWarning, match="static cache unavailable"):
        static = generate(tiny_llama, policy, ps, list(BUDGETS), static=True)
    assert_same(generate(tiny_llama, policy, ps, list(BUDGETS), static=False), static)


COMPRESSED = [
    KVConfig(k_sparsity=0.5, v_sparsity=0.7, mode="compressed"),
    KVConfig(k_sparsity=0.7, v_sparsity=0.5, mode="compressed", window=0),
    KVConfig(k_sparsity=0.7, v_sparsity=0.5, mode="compressed", window=8, k_scorer="output_aware"),
    KVConfig(k_sparsity=0.7, v_sparsity=0.5, mode="compressed", value_dtype="fp8"),
    KVConfig(k_sparsity=0.5, mode="compressed", window=8, k_scorer="output_aware", value_dtype="fp8"),
    KVConfig(k_layer_sparsity=(0.7, 0.0), v_layer_sparsity=(0.5, 0.0), mode="compressed", value_dtype="fp8"),
]


def assert_rows_alone(model, policy, ps, budgets, backend_calls, dynamic_too=True):
    """A padded static compressed batch equals each row run alone (static, and dynamic with `dynamic_too`),
    through the sparse op."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the dynamic cache
        batch = generate(model, policy, ps, budgets, static=True)
    assert backend_calls, "the padded batch never reached the static compressed decode"
    for p, n, got in zip(ps, budgets, batch, strict=True):
        alone = generate(model, policy, [p], n, static=True)[0]
        assert got.tokens == alone.tokens
        assert got.stopped_by == alone.stopped_by
        counts = ("k_kept", "k_judged", "v_kept", "v_judged", "dense_bytes", "kv_payload_bytes")
        assert [getattr(got.stats, c) for c in counts] == [getattr(alone.stats, c) for c in counts]
        assert got.stats.k_judged > 0
        if dynamic_too:
            dynamic = generate(model, policy, [p], n, static=False)[0]
            assert got.tokens == dynamic.tokens
            assert [getattr(got.stats, c) for c in counts] == [getattr(dynamic.stats, c) for c in counts]


@pytest.mark.parametrize("policy", COMPRESSED, ids=lambda p: f"{p.label()}-w{p.window}")
def test_static_compressed_padded_batch_equals_each_row_alone(tiny_llama, policy, monkeypatch):
    import mustafar.static_cache as sc

    calls = []
    real = sc.compressed_decode_attention
    monkeypatch.setattr(sc, "compressed_decode_attention", lambda *a: calls.append(1) or real(*a))
    assert_rows_alone(tiny_llama, policy, prompts(), list(BUDGETS), calls)


@pytest.mark.slow
@pytest.mark.usefixtures("triton_interpreter")
def test_static_compressed_padded_batch_through_the_triton_sparse_op(tiny_llama, monkeypatch):
    """Triton kernels under the interpreter: the per-row device counts of the static stores carry the padding
    into the top-k pack and the sparse decode op (never the reference path). Against the static run of each row
    alone (the Triton pack and decode are already checked against the dynamic path in tests/kernels/)."""
    import mustafar.static_cache as sc

    monkeypatch.setenv("MUSTAFAR_KERNEL_BACKEND", "triton")
    calls = []
    real = sc.sparse_decode_attention

    def spy(q, ks, vs, *rest, **kw):
        assert ks.static
        if ks.batch > 1:  # the padded batch: its rows decode to different counts
            assert ks.length_tensor.unique().numel() > 1
            calls.append(1)
        return real(q, ks, vs, *rest, **kw)

    monkeypatch.setattr(sc, "sparse_decode_attention", spy)
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.7, mode="compressed", window=8)
    assert_rows_alone(tiny_llama, policy, prompts((13, 30)), [4, 3], calls, dynamic_too=False)


def test_auto_stays_dynamic_on_cpu_and_static_needs_a_fresh_cache(tiny_llama, monkeypatch):
    from mustafar.runner_pool import release

    release(tiny_llama)  # no cache kept from the tests above
    built = []
    real = StaticMustafarCache.__init__

    def spy(self, *args, **kwargs):
        built.append(args)
        real(self, *args, **kwargs)

    monkeypatch.setattr(StaticMustafarCache, "__init__", spy)
    p = prompts()[0]
    generate(tiny_llama, KVConfig(), [p], 3)
    assert built == []
    generate(tiny_llama, KVConfig(), [p], 3, static=True)
    assert built[0][2] == 256  # capacity: the prompt + the budget (40), rounded up to the 256-token bucket
    from mustafar.attention import new_cache

    with pytest.raises(ValueError, match="static=True"):
        generate(tiny_llama, KVConfig(), [p], 3, cache=new_cache(tiny_llama, KVConfig()), static=True)
