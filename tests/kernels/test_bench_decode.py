"""The end-to-end decode benchmark's CPU-checkable parts: it refuses without a GPU, and its caches are right."""

from __future__ import annotations

import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
bench = pytest.importorskip("bench_decode")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_refuses_on_cpu():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_decode.py")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


def test_every_format_decodes_the_same_first_token():
    """Filled caches hold the same tokens, so a decode step through each format gives (nearly) equal logits at
    sparsity 0 and the dense formats agree exactly."""
    model = bench.build_model("tiny", torch.float32, "cpu")
    logits = {}
    for fmt in ("dense", "dense-prealloc"):
        torch.manual_seed(5)
        cache = bench.fill_cache(model, fmt, 2, 40)
        with torch.inference_mode():
            out = model(
                input_ids=torch.ones(2, 1, dtype=torch.long),
                position_ids=torch.full((2, 1), 40),
                past_key_values=cache,
                use_cache=True,
            )
        logits[fmt] = out.logits
        assert cache.get_seq_length() == 41
    torch.testing.assert_close(logits["dense"], logits["dense-prealloc"])


def test_cache_bytes_counts_allocated_buffers():
    model = bench.build_model("tiny", torch.float32, "cpu")
    c = model.config
    dense = bench.fill_cache(model, "dense", 2, 64)
    assert (
        bench.cache_bytes(dense) == 2 * c.num_hidden_layers * 2 * c.num_key_value_heads * 64 * c.head_dim * 4
    )
    compressed = bench.fill_cache(model, "K0.7V0.7", 2, 64)
    layer = compressed.layers[0]
    want = sum(s.nbytes for s in layer.stores.values()) + 2 * layer.keys.numel() * 4
    assert bench.cache_bytes(compressed) == want * c.num_hidden_layers


def test_static_formats_decode_like_the_dense_baseline():
    """On the same filled tokens the dense-static cache decodes like the preallocated dense one, and the
    compressed static one differs (its cache was pruned while filling)."""
    model = bench.build_model("tiny", torch.float32, "cpu")
    logits = {}
    for fmt in ("dense-prealloc", "dense-static", "K0.5V0.5-static"):
        torch.manual_seed(5)
        cache = bench.fill_cache(model, fmt, 2, 40)
        with torch.inference_mode(), bench.attach(model, cache) if fmt != "dense-prealloc" else nullcontext():
            out = model(
                input_ids=torch.ones(2, 1, dtype=torch.long),
                position_ids=torch.full((2, 1), 40),
                past_key_values=cache,
                use_cache=True,
            )
        logits[fmt] = out.logits
    torch.testing.assert_close(logits["dense-static"], logits["dense-prealloc"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits["K0.5V0.5-static"], logits["dense-prealloc"], atol=1e-3)


def test_static_cache_bytes_include_capacity():
    model = bench.build_model("tiny", torch.float32, "cpu")
    c = model.config
    cap = 64 + bench.PREALLOC_STEPS
    dense = bench.fill_cache(model, "dense-static", 2, 64)
    assert (
        bench.cache_bytes(dense) == 2 * c.num_hidden_layers * 2 * c.num_key_value_heads * cap * c.head_dim * 4
    )
    compressed = bench.fill_cache(model, "K0.7V0.7-static", 2, 64)
    layer = compressed.layers[0]
    assert layer.stores["k"].capacity == cap
    want = sum(s.nbytes for s in layer.stores.values()) + 2 * layer.ring_k.numel() * 4
    assert bench.cache_bytes(compressed) == want * c.num_hidden_layers


def test_render_static_marks_uncaptured_formats():
    p = dict(bench.asdict(bench.Point("tiny", "K0.7V0.7-static", 8, 16384)), step_ms=40.0, tokens_per_s=200.0)
    p["graph_blocker"] = "no device length"
    q = dict(p, fmt="dense-static", graph_blocker=None, graph_step_ms=10.0, graph_event_ms=9.0)
    q["graph_tokens_per_s"] = 800.0
    text = "\n".join(bench.render_static([p, q]))
    assert "| K0.7V0.7-static | 8 | 40.00 | 200 | — | — |" in text
    assert "| 10.00 | 800 | 9.00 | 1.111 |" in text
    assert "- not captured: K0.7V0.7-static: no device length" in text
