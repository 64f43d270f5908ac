"""The sweep-throughput benchmark's CPU-checkable parts: the job's shape, the job-time model, the script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.longbench import data
from mustafar.bench.longbench_shape import (
    EN_TASKS,
    MAX_PROMPT,
    LengthModel,
    PathCost,
    interpolate,
    job_seconds,
    prompt_lengths,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
bench = pytest.importorskip("bench_sweep")


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    """Fallbacks are announced once per process; each test sees its own first time."""
    from mustafar.kernels import support

    monkeypatch.setattr(support, "_WARNED", set())


def test_job_is_the_harness_english_task_set():
    assert set(EN_TASKS) == set(data.DEFAULT_TASKS)
    assert {t: n for t, (n, _) in EN_TASKS.items()} == {t: data.EXPECTED_COUNTS[t] for t in EN_TASKS}
    assert sum(n for n, _ in EN_TASKS.values()) == 3750
    maxlen = json.loads((ROOT / "eval" / "longbench" / "maxlen.json").read_text())
    assert (
        sum(n * maxlen[t] for t, (n, _) in EN_TASKS.items()) == 508_800
    )  # 200 x 2,176 + 150 x 64 + 1,000 x 64


def test_prompt_lengths_are_seeded_truncated_and_centred():
    a = prompt_lengths("lcc", 500, seed=0)
    assert a == prompt_lengths("lcc", 500, seed=0) and a != prompt_lengths("lcc", 500, seed=1)
    # lcc: 1,235 words x 2 tokens/word; a log-normal with sigma 0.5 around it rarely reaches the cap
    assert abs(sum(a) / len(a) - 2470) < 0.1 * 2470
    long = prompt_lengths("narrativeqa", 200, seed=0)  # 18,409 words: nearly all truncated
    assert max(long) == MAX_PROMPT and sum(x == MAX_PROMPT for x in long) > 190
    tight = prompt_lengths("qasper", 50, seed=0, model=LengthModel(sigma=1e-9))
    assert set(tight) == {round(3619 * 1.3)}
    with pytest.raises(ValueError, match="unknown LongBench English task 'dureader'"):
        prompt_lengths("dureader", 1, seed=0)


def test_interpolate_is_piecewise_linear_and_extends():
    pts = {1000: 10.0, 3000: 20.0, 7000: 60.0}
    assert interpolate(pts, 2000) == 15.0
    assert interpolate(pts, 5000) == 40.0
    assert interpolate(pts, 8000) == 70.0  # the last segment extended
    assert interpolate(pts, 0) == 5.0
    assert interpolate({500: 3.0}, 9000) == 3.0


def test_job_seconds_prices_batches_at_their_longest_prompt():
    cost = PathCost(batch=2, prefill_s={0: 0.0, 1000: 1.0}, step_ms={0: 0.0, 1000: 10.0}, setup_ms=50.0)
    # task of 3 samples -> batches [900, 600] and [100]; 20 new tokens each at context prompt + 10
    got = job_seconds(cost, {"t": [600, 100, 900]}, {"t": 20})
    want = (0.9 + (50 + 20 * 9.1) / 1000) + (0.1 + (50 + 20 * 1.1) / 1000)
    assert math.isclose(got["t"], want)


def test_refuses_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_sweep.py")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


def test_measure_runs_both_paths_on_a_tiny_model(monkeypatch):
    """The measurement loop itself (timings are meaningless on a CPU; no CUDA sync there)."""
    from mustafar.bench.random_model import build_model

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    model = build_model("tiny", torch.float32, "cpu")
    for batched in (False, True):
        with pytest.warns(RuntimeWarning) if batched else _nothing():
            point = bench.measure(model, bench.POLICIES["K0.7V0.7"], batched, 2, 48, 2)
        assert point["prefill_s"] > 0 and point["step_ms"] > 0 and point["captured"] is False


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_render_reports_speedup():
    job = {"policy": "dense", "batch": 1, "gpu_minutes": 300.0, "per_task_minutes": {}}
    report = {
        "samples": 3750,
        "prompt_tokens": 10,
        "new_tokens": 509000,
        "model": "llama3_8b",
        "dtype": "bfloat16",
        "device": "H200",
        "grid": [1024],
        "steps": 4,
        "length_model": {
            "tokens_per_word": 1.3,
            "tokens_per_code_word": 2.0,
            "sigma": 0.5,
            "max_prompt": 7500,
        },
        "jobs": {
            "dense / batch-1 eager": dict(job, path="batch-1 eager"),
            "dense / batched graphs": dict(job, path="batched graphs", batch=32, gpu_minutes=12.0),
        },
        "measured": {
            "dense / batched graphs": {1024: dict(prefill_s=1.0, step_ms=9.0, setup_ms=40, captured=True)}
        },
    }
    text = bench.render(report)
    assert "| dense | batched graphs | 32 | 12.0 | 25.0x |" in text
    assert "| dense / batched graphs | 1024 | 1.000 | 9.00 | 40 | True |" in text
