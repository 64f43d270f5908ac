"""scripts/eviction_table.py prices a job's cache from the counts its result rows carry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.script_module import load_script


def _write(path: Path, **row) -> Path:
    base = dict(kind="task", head_dim=64, dtype="float32", k_sparsity=0.5, v_sparsity=0.5, policy="p", task="t",
                samples=[1.0, 0.0])  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": [{**base, **row}]}))
    return path


def test_kv_size_from_the_rows_counts_matches_a_hand_worked_value(tmp_path):
    # 200 token-heads seen: 50 evicted, 150 cached, 100 of them pruned on each side (the other 50: window, dense).
    # A pruned K0.5 token at D 64 takes 8 bitmap bytes + 32 fp16 values = 72 bytes, a dense one 128:
    # (100·72 + 50·128) per side over 200·128 → 13,600 / 25,600 = 0.53125; kept tokens 150 / 200.
    per_token_head = 64 * 4 * 2  # fp32 K + V
    path = _write(tmp_path / "jobs" / "a.json", k_judged=100 * 64, v_judged=100 * 64,
                  dense_kv_bytes=150 * per_token_head, kv_evicted_bytes=50 * per_token_head)  # fmt: skip
    job = load_script("eviction_table")._job(path)
    assert job["kept_tokens"] == pytest.approx(0.75)
    assert job["kv_size"] == pytest.approx(0.53125)


def test_rows_without_counts_are_refused_by_name(tmp_path):
    path = _write(tmp_path / "old" / "result.json", dense_kv_bytes=1, kv_evicted_bytes=0)
    with pytest.raises(SystemExit, match="result.json.*k_judged"):
        load_script("eviction_table")._job(path)


def test_a_folder_without_results_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no result.json"):
        load_script("eviction_table")._result_files(tmp_path)


def test_two_jobs_of_one_policy_are_refused_by_name(tmp_path):
    counts = dict(k_judged=64, v_judged=64, dense_kv_bytes=512, kv_evicted_bytes=0)
    _write(tmp_path / "a" / "result.json", **counts)
    _write(tmp_path / "jobs" / "b.json", **counts)
    with pytest.raises(SystemExit, match="two jobs of policy 'p'"):
        load_script("eviction_table").main(str(tmp_path), [])
