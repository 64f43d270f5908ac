"""The end-to-end decode benchmark's CPU-checkable parts: it refuses without a GPU, and its caches are right."""

from __future__ import annotations

import subprocess
import sys
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
