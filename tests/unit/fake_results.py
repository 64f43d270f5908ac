"""Fake finished jobs: result.json files written through the real row schema (eval.rows), no model needed."""

from __future__ import annotations

import json
from pathlib import Path

from eval.common import Score
from eval.rows import SCHEMA, score_rows

JOB = {
    "sweep": "s", "git_sha": None, "seed": 42, "timestamp": "2026-01-01T00:00:00+00:00", "device": "cpu",
    "host": "h", "job_seconds": 1.0, "versions": {}, "model": "tiny", "model_source": "hf", "model_path": None,
    "dtype": "float32", "layers": 2, "q_heads": 4, "kv_heads": 2, "head_dim": 64, "context_length": 8192,
    "max_length": 1000, "k_sparsity": 0.0, "v_sparsity": 0.0, "k_direction": "token", "v_direction": "token",
    "k_scorer": "magnitude", "v_scorer": "magnitude", "window": 32, "keep_rule": "exact", "mode": "mask",
    "policy": "dense", "benchmark": "ruler", "benchmark_length": 1024, "k_sparsity_measured": 0.0,
    "v_sparsity_measured": 0.0, "kv_bytes": None, "kv_payload_bytes": None, "dense_kv_bytes": 10,
    "prompt_tokens": 10, "new_tokens": 2, "generation_seconds": 1.0,
}  # fmt: skip


def fake_job(sweep: Path, run_id: str, samples: dict[str, list[float]], **fields) -> None:
    """Write sweep/run_id/result.json: task scores = the means of `samples`; `fields` override the job's."""
    job = {**JOB, "run_id": run_id, "samples_id": fields.pop("samples_id", "p1")}
    job["benchmark_config"] = {"name": "ruler", "length": 1024, "n": 4, "seed": 42, "tasks": list(samples)}
    if fields.get("benchmark") == "longbench":
        job["benchmark_config"] = {"name": "longbench", "n": None, "tasks": None}
    job["benchmark_config"] |= fields.pop("benchmark_config", {})
    job |= fields
    scores = [Score(t, "string_match_all", round(sum(v) / len(v), 2), len(v), v) for t, v in samples.items()]
    rows = [r.to_dict() for r in score_rows(job, job["benchmark"], scores)]
    path = sweep / run_id / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"job_id": run_id, "identity": {}, "schema": SCHEMA, "rows": rows}))
