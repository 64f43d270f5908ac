"""The runner pool (`mustafar.runner_pool`) on a CPU: capacity buckets, keying, LRU eviction and the in-place
reset between batches (the graph replay itself is GPU-only: tests/kernels/test_gpu_graphs.py)."""

from __future__ import annotations

import pytest
import torch

from mustafar.config import KVConfig
from mustafar.generation import generate
from mustafar.runner_pool import RunnerPool, capacity_bucket, pool_of, release


@pytest.fixture
def model(tiny_llama):
    release(tiny_llama)
    yield tiny_llama
    release(tiny_llama)


def prompts(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 256, (n,), generator=g).tolist() for n in lengths]


def _addresses(cache) -> list[int]:
    out = []
    for layer in cache.layers:
        for value in vars(layer).values():
            for item in value.values() if isinstance(value, dict) else (value,):
                if isinstance(item, torch.Tensor):
                    out.append(item.data_ptr())
        for store in getattr(layer, "stores", {}).values():
            out += [store.bits.data_ptr(), store.vals.data_ptr()]
    return out


@pytest.mark.parametrize("tokens, bucket", [(1, 256), (255, 256), (256, 256), (257, 512), (7500, 7680)])
def test_capacity_bucket(tokens, bucket):
    assert capacity_bucket(tokens) == bucket


def test_bad_capacity_and_keep_are_refused():
    with pytest.raises(ValueError, match="got 0"):
        capacity_bucket(0)
    with pytest.raises(ValueError, match="keep must be >= 1, got 0"):
        RunnerPool(keep=0)


POLICIES = [
    KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=8),
    KVConfig(k_sparsity=0.7, v_sparsity=0.5, k_scorer="output_aware", v_scorer="output_aware", window=8),
    KVConfig(k_sparsity=0.5, v_sparsity=0.7, mode="compressed", window=8),
]


@pytest.mark.parametrize("policy", POLICIES, ids=["mask", "mask-output-aware", "compressed"])
def test_batches_of_one_key_share_a_cache_reset_in_place(model, policy):
    """Three padded batches of different widths in one bucket: one cache, the same buffers throughout, and each
    batch equals a fresh dynamic run (a stale count, pad, statistic or store from the batch before would not)."""
    batches = [prompts((30, 52), 1), prompts((61, 17), 2), prompts((40, 44), 3)]
    budgets = [[5, 3], [2, 6], [4, 4]]
    pool, addresses = pool_of(model), None
    for ps, n in zip(batches, budgets):
        got = generate(model, policy, ps, n, static=True)
        (runner,) = pool.runners.values()
        addresses = addresses or _addresses(runner.cache)
        assert _addresses(runner.cache) == addresses
        for g, d in zip(got, generate(model, policy, ps, n, static=False), strict=True):
            assert g.tokens == d.tokens
            assert (g.stats.k_kept, g.stats.k_judged, g.stats.v_kept, g.stats.v_judged) == (
                d.stats.k_kept,
                d.stats.k_judged,
                d.stats.v_kept,
                d.stats.v_judged,
            )
    assert pool.built == 1
    assert runner.cache.capacity == 256


def test_keys_and_least_recently_used_eviction(model):
    pool = pool_of(model)
    a, b = (
        KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4),
        KVConfig(k_sparsity=0.7, v_sparsity=0.7, window=4),
    )
    p = prompts((20, 9), 4)
    generate(model, a, p, 2, static=True)
    generate(model, a, p[:1], 2, static=True)  # another batch size
    assert pool.built == 2
    generate(model, a, p, 2, static=True)  # kept: no new cache, and now the most recently used
    assert pool.built == 2
    generate(model, b, p, 2, static=True)  # another policy: evicts batch size 1 of policy a
    assert pool.built == 3
    assert [(k.batch, k.policy) for k in pool.runners] == [(2, a), (2, b)]
    generate(model, a, prompts((300, 9), 5), 2, static=True)  # 302 tokens: the 512 bucket
    assert [(k.batch, k.capacity, k.policy) for k in pool.runners] == [(2, 256, b), (2, 512, a)]
    generate(model, a, [p[0], p[0]], 2, static=True)  # unpadded: a key apart from the padded batches
    assert [k.padded for k in pool.runners] == [True, False]
    assert pool.built == 5


def test_padding_refills_the_same_device_buffer(model):
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4)
    generate(model, policy, prompts((20, 9), 6), 2, static=True)
    (runner,) = pool_of(model).runners.values()
    held = runner.cache.layers[0].pad_columns
    assert held.tolist() == [0, 11]
    generate(model, policy, prompts((12, 30), 7), 2, static=True)
    assert runner.cache.layers[0].pad_columns is held
    assert held.tolist() == [18, 0]


def test_a_copied_model_starts_with_an_empty_pool(model):
    import copy

    generate(model, KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4), prompts((20, 9), 8), 2, static=True)
    assert pool_of(model).built == 1
    assert pool_of(copy.deepcopy(model)).runners == {}


def test_a_reused_fp8_mask_cache_rounds_every_batch(model):
    """fp8 values in a static mask cache reused across batches: each batch's columns past the window lie on the fp8
    grid (the reset forgets how far the previous batch had rounded), the window's do not."""
    from mustafar.formats.fp8 import fake_quantize

    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=8, value_dtype="fp8")
    pool = pool_of(model)
    for ps in (prompts((30, 52), 1), prompts((61, 17), 2)):
        generate(model, policy, ps, 1, static=True)
        (runner,) = pool.runners.values()
        for layer in runner.cache.layers:
            past = layer.host_length - policy.window - 1  # the last step's leaving column is rounded too
            for tensor in (layer.keys, layer.values):
                assert torch.equal(fake_quantize(tensor[:, :, :past]), tensor[:, :, :past])
                window = tensor[:, :, past + 1 : layer.host_length]
                assert not torch.equal(fake_quantize(window), window)


def test_a_model_moved_to_another_device_gets_its_own_cache(monkeypatch):
    """The key holds the weights' device: a model moved between devices (same dtype, batch and policy) reused the
    cache and captured graphs built on the old one."""
    from mustafar import runner_pool
    from mustafar.static_cache import StaticMustafarCache

    class Cache(StaticMustafarCache):
        def __init__(self) -> None:  # a stand-in: no model work, only the pool's bookkeeping
            self.resets = 0
            self.layers = [None, None]  # a reused cache's layer count is checked against the policy

        def reset(self) -> None:
            self.resets += 1

    monkeypatch.setattr(runner_pool, "static_cache", lambda *args, **kwargs: Cache())
    monkeypatch.setattr(
        runner_pool, "DecodeRunner", lambda model, cache, graphs: type("R", (), {"cache": cache})()
    )
    model, pool, policy = torch.nn.Linear(2, 2), RunnerPool(), KVConfig(k_sparsity=0.5)
    first = pool.runner(model, policy, 2, 16, 4, padded=False, shortest=16)
    assert pool.runner(model, policy, 2, 16, 4, padded=False, shortest=16) is first  # same device: kept
    model.to("meta")
    moved = pool.runner(model, policy, 2, 16, 4, padded=False, shortest=16)
    assert moved is not first and pool.built == 2
    assert [k.device.type for k in pool.runners] == ["cpu", "meta"]
