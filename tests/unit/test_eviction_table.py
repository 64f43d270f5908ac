"""scripts/eviction_table.py prices a job's cache from the counts its result rows carry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.script_module import load_script

BASE = dict(kind="task", head_dim=64, dtype="float32", k_sparsity=0.5, v_sparsity=0.5, policy="p", task="t",
            metric="m", samples=[1.0, 0.0], benchmark="ruler")  # fmt: skip


def _write(path: Path, *more: dict, **row) -> Path:
    """A result.json of one task row (BASE with `row`), then rows `more` (each BASE with `row` and its own)."""
    rows = [{**BASE, **row}, *({**BASE, **row, **r} for r in more)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows}))
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


def test_avg_is_the_tables_english_avg_and_buckets_are_no_tasks(tmp_path, capsys):
    """LongBench-E: a length bucket (metric `<name>@<bucket>`) is part of its task, not the task's score, and
    `avg` is the tables' (English tasks only: dureader never enters it). qasper: dense 2 of 3 right (66.7), K0.5
    1 of 3 (33.3), each's 8k+ bucket 0; so avg 66.7 and 33.3, and the pair K0.5 − dense −33.3 over 3 samples
    (with the bucket as the task: 0.0 both; with dureader averaged in: 78.3 and 66.7)."""
    counts = dict(k_judged=64, v_judged=64, dense_kv_bytes=512, kv_evicted_bytes=0, benchmark="longbench")
    for name, qasper, dureader in (
        ("dense", [100.0, 100.0, 0.0], [90.0, 90.0]),
        ("K0.5", [100.0, 0.0, 0.0], [100.0] * 2),
    ):
        _write(tmp_path / name / "result.json", {"metric": "qa_f1_score@8k+", "samples": [0.0]},
               {"task": "dureader", "samples": dureader}, task="qasper", metric="qa_f1_score", samples=qasper,
               policy=name, samples_id="p", **counts)  # fmt: skip
    load_script("eviction_table").main(str(tmp_path), ["K0.5=dense"])
    out = capsys.readouterr().out
    header, _, *lines = [
        [c.strip() for c in line.strip("|").split("|")] for line in out.split("\n\n")[0].splitlines()
    ]
    table = {line[0]: dict(zip(header, line)) for line in lines}
    assert header[:4] == ["policy", "dureader", "qasper", "avg"]
    assert [table["dense"][c].split()[0] for c in ("qasper", "avg")] == ["66.7", "66.7"]
    assert [table["K0.5"][c].split()[0] for c in ("qasper", "avg")] == ["33.3", "33.3"]
    assert "K0.5 − dense: -33.3 [" in out and out.rstrip().endswith("(n = 3)")
