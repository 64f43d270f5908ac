"""The helper scripts refuse what they cannot answer (one `error:` line, exit 2) instead of answering wrongly or
with a traceback; the W&B summary of a sweep stays one run; the nm_quota plots write only where told."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.unit.fake_results import fake_job
from tests.unit.script_module import load_script

ROOT = Path(__file__).resolve().parents[2]
# 100 token-heads cached (fp32 K + V at D 64), 50 of them pruned on each side: a consistent eviction job
COUNTS = dict(k_judged=50 * 64, v_judged=50 * 64, dense_kv_bytes=100 * 64 * 4 * 2, kv_evicted_bytes=0)


def refusal(capsys, call) -> str:
    """The one stderr line of a call that must exit 2 (a user error), not raise or carry on."""
    with pytest.raises(SystemExit) as exit_:
        call()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def eviction_sweep(tmp_path) -> Path:
    """Two jobs on the same prompts (K0.5, K0.7) and one seed-7 job asked other prompts (K0.9)."""
    fake_job(tmp_path, "a", {"vt": [100.0, 0.0]}, k_sparsity=0.5, v_sparsity=0.5, policy="K0.5", **COUNTS)
    fake_job(tmp_path, "b", {"vt": [0.0, 0.0]}, k_sparsity=0.7, v_sparsity=0.7, policy="K0.7", **COUNTS)
    fake_job(
        tmp_path, "c", {"vt": [0.0, 0.0]}, k_sparsity=0.9, policy="K0.9", seed=7, samples_id="p7", **COUNTS
    )
    return tmp_path


def test_eviction_pair_of_the_same_prompts_is_tested(eviction_sweep, capsys):
    load_script("eviction_table").main(str(eviction_sweep), ["K0.5=K0.7"])
    assert "K0.5 − K0.7: +50.0 [" in capsys.readouterr().out


def test_eviction_pair_of_other_prompts_is_refused_naming_both_jobs(eviction_sweep, capsys):
    err = refusal(capsys, lambda: load_script("eviction_table").main(str(eviction_sweep), ["K0.5=K0.9"]))
    assert "not asked the same prompts (samples_id p1 vs p7)" in err
    assert (
        str(eviction_sweep / "a" / "result.json") in err and str(eviction_sweep / "c" / "result.json") in err
    )
    assert capsys.readouterr().out == ""  # refused before the table: no half answer


@pytest.mark.parametrize(
    ("pair", "why"),
    [
        ("K0.5=K0.77", "no job of policy 'K0.77'"),
        ("K0.5", "'K0.5' is not A=B"),
        ("K0.5=K0.7=K0.9", "is not A=B"),
    ],
)
def test_eviction_pair_naming_no_job_or_malformed_is_refused(eviction_sweep, capsys, pair, why):
    err = refusal(capsys, lambda: load_script("eviction_table").main(str(eviction_sweep), [pair]))
    assert why in err


def test_eviction_jobs_of_different_task_lists_are_refused(tmp_path, capsys):
    fake_job(tmp_path, "a", {"vt": [100.0]}, **COUNTS)
    fake_job(tmp_path, "b", {"cwe": [0.0]}, k_sparsity=0.5, policy="K0.5", **COUNTS)
    err = refusal(capsys, lambda: load_script("eviction_table").main(str(tmp_path), []))
    assert "ran different tasks (vt vs cwe)" in err and str(tmp_path / "b" / "result.json") in err


def test_eviction_script_exits_2_with_one_line(eviction_sweep):
    script = ROOT / "scripts" / "eviction_table.py"
    proc = subprocess.run([sys.executable, script, eviction_sweep, "K0.5"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: pair 'K0.5' is not A=B") and proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("name", "why"), [("missing.json", "no such file"), (".", "a folder, not a result.json")]
)
def test_paired_compare_refuses_a_path_that_is_no_result_file(tmp_path, capsys, name, why):
    fake_job(tmp_path, "a", {"vt": [100.0]})
    good, bad = str(tmp_path / "a" / "result.json"), str(tmp_path / name)
    err = refusal(capsys, lambda: load_script("paired_compare").main([good, bad]))
    assert err == f"error: {tmp_path / name}: {why}" + (
        " (give <job>/result.json)\n" if name == "." else "\n"
    )


def test_paired_compare_refuses_jobs_of_different_tasks(tmp_path, capsys):
    fake_job(tmp_path, "a", {"vt": [100.0]})
    fake_job(tmp_path, "b", {"cwe": [0.0]}, policy="K0.5")
    files = [str(tmp_path / j / "result.json") for j in "ab"]
    assert "same tasks on both sides" in refusal(capsys, lambda: load_script("paired_compare").main(files))


def test_paired_compare_script_exits_2_with_one_line(tmp_path):
    fake_job(tmp_path, "a", {"vt": [100.0]})
    script = ROOT / "scripts" / "paired_compare.py"
    proc = subprocess.run(
        [sys.executable, script, tmp_path / "a" / "result.json", tmp_path], capture_output=True, text=True
    )
    assert (
        proc.returncode == 2
        and proc.stderr == f"error: {tmp_path}: a folder, not a result.json (give <job>/result.json)\n"
    )


def _offline_run_ids(results_dir: Path) -> list[str]:
    """Run ids of the offline runs under results_dir/wandb (each run folder holds run-<id>.wandb)."""
    return [
        p.name.removeprefix("run-").removesuffix(".wandb")
        for p in (results_dir / "wandb").glob("offline-run-*/run-*.wandb")
    ]


def test_wandb_summary_relog_resumes_the_sweeps_one_run(tmp_path, monkeypatch):
    from eval.report.wandb_summary import log_summary

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    logger = {"name": "wandb", "mode": "offline", "project": "mustafar-test"}
    table = {"t": pd.DataFrame({"policy": ["dense"], "Average": [50.0]})}
    for _ in range(2):  # make_tables --wandb, then the end-of-multirun callback
        log_summary(logger, tmp_path / "a", "s", table, [])
    log_summary(logger, tmp_path / "b", "s", table, [])  # the same sweep name in another results folder
    log_summary(logger, tmp_path / "a", "t", table, [])  # another sweep in the same folder
    ids = {folder: _offline_run_ids(tmp_path / folder) for folder in "ab"}
    assert len(ids["a"]) == 3 and len(set(ids["a"])) == 2  # one run per sweep however often it is logged
    assert len(ids["b"]) == 1
    assert not set(ids["a"]) & set(ids["b"])


@pytest.fixture
def nm_quota_copy(tmp_path) -> Path:
    """The nm_quota plot scripts next to (a link to) the committed jobs, in a folder of their own: what a run of
    them writes lands there, never over the committed PNGs."""
    here = ROOT / "results" / "paper" / "nm_quota"
    folder = tmp_path / "results" / "paper" / "nm_quota"
    folder.mkdir(parents=True)
    (folder / "jobs").symlink_to(here / "jobs")
    for name in ("plot_groups.py", "plot_formats.py"):
        shutil.copy(here / name, folder / name)
    return folder


@pytest.mark.parametrize("script", ["plot_groups.py", "plot_formats.py"])
def test_nm_quota_plot_help_writes_nothing_and_out_is_honoured(nm_quota_copy, tmp_path, script):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, nm_quota_copy / script]
    proc = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert list(tmp_path.rglob("*.png")) == []
    assert proc.returncode == 0 and "--out" in proc.stdout
    out = tmp_path / "elsewhere.png"
    proc = subprocess.run([*run, "--out", out], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.rglob("*.png")) == [out]
