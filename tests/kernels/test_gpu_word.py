"""On a GPU (skipped on CPU): `kv.keep_rule=word` end to end. The per-word Triton prune+pack against the word
mask (fp16/bf16 x D 64/128, Gaussian and tie-heavy rows, poisoned buffers, static stores at per-row device
counts), and generation in compressed mode against mask mode with the scatter decoder doing the decode (dynamic
cache, and the static cache whose decode step is captured in a CUDA graph)."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from mustafar.attention import attach, new_cache
from mustafar.config import KVConfig
from mustafar.formats import CompressedStore
from mustafar.generation import generate
from mustafar.graphs import greedy
from mustafar.kernels import topk_pack_into
from mustafar.pruning import word_topk_mask
from mustafar.static_cache import StaticMustafarCache, capture_blocker, unpack_fixed

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _rows(b, h, t, d, dtype, data, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    if data == "ties":
        return (torch.randint(-3, 4, (b, h, t, d), device="cuda", generator=g) * 0.5).to(dtype)
    return torch.randn(b, h, t, d, device="cuda", generator=g).to(dtype)


@pytest.mark.parametrize("head_dim, keep", [(64, 19), (64, 32), (128, 38), (128, 64), (128, 3)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("data", ["gauss", "ties"])
def test_word_pack_matches_the_word_mask_on_gpu(head_dim, keep, dtype, data):
    rows = _rows(2, 4, 300, head_dim, dtype, data)
    store = CompressedStore(2, 4, head_dim, dtype, "cuda", keep, word_quota=True)
    store.reserve(300)
    store.vals.fill_(math.nan)
    store.bits.fill_(-1)
    topk_pack_into(store, rows, keep)
    assert torch.equal(store.to_dense(), rows * word_topk_mask(rows.abs(), keep))
    assert (store.vals[:, :, :300, keep:] == 0).all()
    store.check_word_counts()


@pytest.mark.parametrize("head_dim, keep", [(64, 19), (128, 38)])
def test_word_pack_at_per_row_device_counts_on_gpu(head_dim, keep):
    rows = _rows(2, 2, 40, head_dim, torch.float16, "gauss", seed=1)
    store = CompressedStore(
        2, 2, head_dim, torch.float16, "cuda", keep, capacity=64, static=True, word_quota=True
    )
    store.length_tensor.copy_(torch.tensor([0, 7], dtype=torch.int32, device="cuda"))
    topk_pack_into(store, rows, keep)
    assert store.length_tensor.tolist() == [40, 47]
    dense, want = unpack_fixed(store), rows * word_topk_mask(rows.abs(), keep)
    assert torch.equal(dense[0, :, :40], want[0]) and torch.equal(dense[1, :, 7:47], want[1])


def _spy_decoders(monkeypatch) -> list[str]:
    used: list[str] = []
    decode = importlib.import_module("mustafar.kernels.decode")  # the dispatcher looks `_run` up per call
    real = decode._run

    def spy(*args, **kwargs):
        used.append(args[0].decoder)  # (cfg, q, k_store, v_store, k_window, v_window, scale, ...)
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "_run", spy)
    return used


def _model(head_dim, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=4096,
    )
    return LlamaForCausalLM(cfg).to("cuda", dtype).eval()


def _forced_logits(model, policy: KVConfig, ids: torch.Tensor, prompt: int):
    cache = new_cache(model, policy)
    out = []
    with attach(model, cache), torch.inference_mode():
        out.append(model(ids[:, :prompt], past_key_values=cache, logits_to_keep=1).logits[:, -1])
        for t in range(prompt, ids.shape[1]):
            out.append(model(ids[:, t : t + 1], past_key_values=cache).logits[:, -1])
    return torch.stack(out, 1).float(), cache


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "kw",
    [
        {"k_sparsity": 0.5, "v_sparsity": 0.5},
        {"k_sparsity": 0.7, "v_sparsity": 0.7},
        {"k_sparsity": 0.5, "k_scorer": "output_aware", "v_sparsity": 0.7},
        # K 4:8 calibrated per head (q gathered through each head's order), V 2:4: both expanded
        {"k_sparsity": 0.5, "v_sparsity": 0.5, "k_keep_rule": "nm8c", "v_keep_rule": "nm4"},
        # K 5:16 calibrated per head + V 5:16, fp8 codes: both expanded through the selector table
        {
            "k_sparsity": 0.6875,
            "v_sparsity": 0.6875,
            "k_keep_rule": "nm16c",
            "v_keep_rule": "nm16",
            "value_dtype": "fp8",
        },
    ],
)
def test_word_compressed_matches_mask_mode_through_the_scatter_decoder(monkeypatch, head_dim, dtype, kw):
    model = _model(head_dim, dtype)
    ids = torch.randint(0, 512, (3, 700), device="cuda")
    masked, _ = _forced_logits(model, KVConfig(keep_rule="word", **kw), ids, prompt=600)
    used = _spy_decoders(monkeypatch)
    compressed, cache = _forced_logits(model, KVConfig(mode="compressed", keep_rule="word", **kw), ids, 600)
    assert used and set(used) == {"scatter"}
    for layer in cache.layers:
        for store in layer.stores.values():
            store.check_word_counts()
    err = ((compressed - masked).norm() / masked.norm()).item()
    assert err < 2e-2, f"relative logit error {err:.2e}"
    agree = (compressed.argmax(-1) == masked.argmax(-1)).float().mean().item()
    assert agree > 0.95, f"top-1 agreement {agree:.3f}"


def _replayed_equals_eager(monkeypatch, model, policy: KVConfig):
    """24 greedy tokens of a 2 x 60-token prompt through the static cache of ``policy``, eagerly and with the
    decode step captured and replayed: the tokens must be equal. Returns the replayed run's cache and the decoders
    both runs called."""
    prompt = torch.randint(0, 512, (2, 60), generator=torch.Generator().manual_seed(3)).cuda()
    used = _spy_decoders(monkeypatch)
    eager, _, _ = greedy(model, policy, prompt, 24, static=True, graphs=False)
    tokens, _, cache = greedy(model, policy, prompt, 24, static=True, graphs=True)
    assert isinstance(cache, StaticMustafarCache) and capture_blocker(cache, prompt.device) is None
    assert torch.equal(tokens, eager)
    return cache, used


@pytest.mark.parametrize("mode", ["compressed", "mask"])
@pytest.mark.parametrize("window", [8, 0])
def test_word_static_graph_replay_equals_eager(monkeypatch, window, mode):
    """The static caches under `word`, decode step captured once and replayed: compressed (the per-word pack at
    the device count, the scatter decode; the stores keep their quotas) and mask (the word mask in place). The
    tokens equal the eager static run's."""
    policy = KVConfig(k_sparsity=0.7, v_sparsity=0.5, keep_rule="word", window=window, mode=mode)
    cache, used = _replayed_equals_eager(monkeypatch, _model(64, torch.float16), policy)
    if mode == "mask":
        assert not used
        return
    assert set(used) == {"scatter"}
    for layer in cache.layers:
        for store in layer.stores.values():
            store.check_word_counts()


def test_word_generate_on_cuda_equals_mask_mode():
    """`mustafar.generate`'s default on CUDA (static cache, graphs) for a left-padded batch in compressed mode
    equals mask mode on the dynamic path (fp16; the same greedy tokens, per-row counts)."""
    model = _model(128, torch.float16)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 512, (n,), generator=g).tolist() for n in (70, 101)]
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", window=8)
    masked = generate(model, policy, prompts, [12, 16], static=False)
    compressed = generate(model, KVConfig(**{**policy.to_dict(), "mode": "compressed"}), prompts, [12, 16])
    for m, c in zip(masked, compressed, strict=True):
        assert c.tokens == m.tokens
        assert (c.stats.k_kept, c.stats.v_kept) == (m.stats.k_kept, m.stats.v_kept)


@pytest.mark.parametrize(
    "k_rule, v_rule, sparsity, value_dtype",
    [("nm8c", "nm4", 0.5, "native"), ("nm8c", "nm4", 0.5, "fp8"), ("nm16c", "nm16", 0.6875, "fp8")],
)
def test_calibrated_static_graph_replay(monkeypatch, k_rule, v_rule, sparsity, value_dtype):
    """K 4:8 in each (row, head)'s prefill order (`nm8c`) + V 2:4 (or K 5:16 calibrated + V 5:16 in fp8 codes) in
    the static compressed cache, its decode step
    captured (the top-k pack at the device count into the stores' in-place order, the scatter decoder gathering q
    through it): the graph's tokens equal the eager static run's, the stores hold the prompt's orders and their
    group counts; then `generate` on two left-padded batches of one shape (the pooled cache reset, its orders
    refilled, the graph replayed) against mask mode on the dynamic path (which rounds values as the fp8 codes do):
    the same greedy tokens and per-row counts."""
    from mustafar.runner_pool import release

    model = _model(128, torch.float16)
    policy = KVConfig(
        k_sparsity=sparsity,
        v_sparsity=sparsity,
        keep_rule="word",
        k_keep_rule=k_rule,
        v_keep_rule=v_rule,
        window=8,
        mode="compressed",
        value_dtype=value_dtype,
    )
    cache, used = _replayed_equals_eager(monkeypatch, model, policy)
    assert set(used) == {"scatter"}
    for layer in cache.layers:
        assert torch.equal(layer.stores["k"].head_order, layer.pruners["k"].order[:, :, 0])
        for store in layer.stores.values():
            store.check_word_counts()
    g = torch.Generator().manual_seed(6)
    mask = KVConfig(**{**policy.to_dict(), "mode": "mask"})
    for lengths in ((70, 101), (90, 99)):
        prompts = [torch.randint(1, 512, (n,), generator=g).tolist() for n in lengths]
        masked = generate(model, mask, prompts, [12, 16], static=False)
        compressed = generate(model, policy, prompts, [12, 16])
        for m, c in zip(masked, compressed, strict=True):
            assert c.tokens == m.tokens
            assert (c.stats.k_kept, c.stats.v_kept) == (m.stats.k_kept, m.stats.v_kept)
    release(model)
