"""eval.report.reuse copies only into job folders no one is using, into the sweep's own results_dir, and refuses
what it cannot do (one `error:` line, exit 2) instead of copying nothing without a word."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.joblock import LOCK_NAME, JobLock
from eval.report import reuse as reuse_module
from eval.report.reuse import main, planned_job_ids, reuse
from tests.unit.fake_results import fake_job

JOB = "tiny_ruler1024_dense_mask_abcd1234"
TINY = ["model=tiny", "benchmark.n=1"]


def lock(folder: Path, pid: int) -> Path:
    """A job.lock of `pid` on this host, beating now (live while the pid is)."""
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": platform.node(), "started": time.time()}))
    return path


def attempt(target: Path, pid: int) -> Path:
    """An unfinished attempt of the job in `target`: saved predictions and the lock of `pid`."""
    (target / "predictions").mkdir(parents=True)
    (target / "predictions" / "vt.jsonl").write_text('{"task": "vt", "index": 0, "pred": "x"}\n')
    return lock(target, pid)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def results(tmp_path) -> Path:
    fake_job(tmp_path / "src", JOB, {"vt": [100.0]})
    return tmp_path


def test_a_job_another_sweep_is_running_is_skipped_not_deleted(results, capsys):
    target = results / "tgt" / JOB
    held = attempt(target, os.getpid())
    assert reuse(results, "tgt", [JOB], ["src"]) == []
    assert held.read_text() and (target / "predictions" / "vt.jsonl").exists()
    assert not (target / "result.json").exists()
    assert f"skip {JOB}: running elsewhere (pid {os.getpid()}" in capsys.readouterr().out


def test_a_dead_attempt_is_replaced_by_the_copy_and_its_stale_lock_removed(results):
    target = results / "tgt" / JOB
    attempt(target, dead_pid())
    assert reuse(results, "tgt", [JOB], ["src"]) == [JOB]
    assert sorted(p.name for p in target.iterdir()) == ["result.json"]
    assert (target / "result.json").read_text() == (results / "src" / JOB / "result.json").read_text()


def test_a_result_finished_while_taking_the_lock_is_kept(results, monkeypatch):
    """Another sweep finishes the job between reuse's first look and its taking the lock: its result stays."""

    class FinishedMeanwhile(JobLock):
        def acquire(self) -> bool:
            fake_job(self.path.parent.parent, JOB, {"vt": [0.0]})
            return super().acquire()

    monkeypatch.setattr(reuse_module, "JobLock", FinishedMeanwhile)
    assert reuse(results, "tgt", [JOB], ["src"]) == []
    rows = json.loads((results / "tgt" / JOB / "result.json").read_text())["rows"]
    assert {r["value"] for r in rows if r["task"] == "vt"} == {0.0}
    assert not (results / "tgt" / JOB / LOCK_NAME).exists()


@pytest.fixture(scope="module")
def main_grid_ids() -> list[str]:
    return planned_job_ids("main_grid", TINY)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch, main_grid_ids) -> Path:
    """A results folder away from the working directory holding one finished key_pruning job of main_grid."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    fake_job(tmp_path / "rd" / "key_pruning", main_grid_ids[0], {"vt": [100.0]})
    return tmp_path / "rd"


def test_reuse_copies_within_the_sweeps_results_dir_override(elsewhere, main_grid_ids, capsys):
    main(["main_grid", "--from", "key_pruning", *TINY, f"results_dir={elsewhere}"])
    assert (elsewhere / "main_grid" / main_grid_ids[0] / "result.json").exists()
    assert not Path("results").exists()
    assert "copied 1 from key_pruning" in capsys.readouterr().out


def test_the_results_flag_wins_over_the_override(elsewhere, main_grid_ids, tmp_path):
    main(
        [
            "main_grid",
            "--from",
            "key_pruning",
            *TINY,
            "--results",
            str(elsewhere),
            f"results_dir={tmp_path}/x",
        ]
    )
    assert (elsewhere / "main_grid" / main_grid_ids[0] / "result.json").exists()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (
            ["main_grid", "--from", "key_prunin", *TINY],
            "error: no sweep folder {rd}/key_prunin (--from key_prunin)",
        ),
        (["main_grd", "--from", "key_pruning", *TINY], "error: unknown experiment 'main_grd' (experiments: "),
        (
            ["main_grid", "--from", "key_pruning", "model=nope"],
            "error: bad override (model=nope {rd_override}): ",
        ),
        (["main_grid", "--from", "key_pruning", *TINY, "foo=1"], "error: bad override ("),
    ],
)
def test_what_reuse_cannot_do_is_one_line_and_exit_2(elsewhere, capsys, args, why):
    with pytest.raises(SystemExit) as exit_:
        main([*args, f"results_dir={elsewhere}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(why.format(rd=elsewhere, rd_override=f"results_dir={elsewhere}"))
