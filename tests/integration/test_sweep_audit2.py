"""Sweep guarantees found broken by a second audit: a lock left by a process whose PID was reused (a container
restart) is stale, a released lock is removed only while it is ours, an interrupted force=true redo never leaves
the earlier result beside new predictions, a folder without results keeps no summary table, and Ctrl-C is one
line and exit 130."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from eval.job import Job
from eval.joblock import LOCK_NAME, STALE_AFTER_S, JobLock, live_owner, read_owner
from eval.results import read_result
from eval.sweep import run_job
from eval.tables import write_summary

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
FAST = ["model=tiny", "logger=none", "benchmark.tasks=[vt]", "benchmark.n=1", "device=cpu"]


def config(*overrides: str, results_dir: Path) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=[*FAST, *overrides]), resolve=True)
    cfg["results_dir"] = str(results_dir)
    return cfg


def job(*overrides: str, results_dir: Path) -> Job:
    return Job.from_config(config(*overrides, results_dir=results_dir))


@pytest.fixture(scope="module")
def done_job(tmp_path_factory) -> Job:
    """One dense job run to completion (its predictions let later tests re-run it in a second)."""
    done = job(results_dir=tmp_path_factory.mktemp("results"))
    assert done.run() == done.result_path
    return done


def copy_of(src: Job, *overrides: str, results_dir: Path) -> Job:
    copy = job(*overrides, results_dir=results_dir)
    shutil.copytree(src.dir, copy.dir)
    return copy


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def own_start_ticks() -> int:
    """This process's start time, /proc/<pid>/stat field 22 (clock ticks after boot)."""
    return int(Path(f"/proc/{os.getpid()}/stat").read_text().rpartition(")")[2].split()[19])


# 1: a lock of our own PID written by an earlier process (the same PID after a container restart)


def test_an_old_format_lock_of_our_pid_from_before_this_process_started_is_stale(tmp_path):
    """The lock format without token and start time: it was written an hour before this process started, so the
    process now holding its PID cannot be its owner."""
    lock_file = tmp_path / LOCK_NAME
    started = time.time() - time.monotonic() - 3600  # before this process (and, most likely, this boot)
    lock_file.write_text(json.dumps({"pid": os.getpid(), "host": platform.node(), "started": started}))
    assert live_owner(lock_file) is None
    lock = JobLock(tmp_path)
    assert lock.acquire()
    lock.release()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs procfs")
def test_a_lock_of_our_pid_with_another_process_start_is_stale_and_ours_is_live(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    record = {"pid": os.getpid(), "host": platform.node(), "started": time.time(), "token": "earlier"}
    lock_file.write_text(json.dumps({**record, "pid_start": own_start_ticks() - 1}))
    assert live_owner(lock_file) is None  # the PID is alive, but it is another process now
    mine = JobLock(tmp_path)
    assert mine.acquire()
    written = json.loads(lock_file.read_text())
    assert written["pid"] == os.getpid() and written["token"] != "earlier"
    assert live_owner(lock_file) is not None and not JobLock(tmp_path).acquire()  # a live lock still blocks
    mine.release()


def test_a_stale_lock_of_our_pid_does_not_block_the_job(done_job, tmp_path, capsys):
    again = copy_of(done_job, results_dir=tmp_path)
    again.result_path.unlink()
    started = time.time() - time.monotonic() - 3600
    lock = {"pid": os.getpid(), "host": platform.node(), "started": started}
    (again.dir / LOCK_NAME).write_text(json.dumps(lock))
    assert again.run() == again.result_path
    assert "running elsewhere" not in capsys.readouterr().out
    assert not (again.dir / LOCK_NAME).exists()


# 2: release after a takeover


def test_releasing_a_lock_taken_over_keeps_the_new_owners_lock(tmp_path, capsys):
    first = JobLock(tmp_path)
    assert first.acquire()
    # as if held from another node whose heartbeat stopped (a lock of this host is judged by its process)
    record = json.loads(first.path.read_text())
    first.path.write_text(json.dumps({**record, "host": "another-node"}))
    age(first.path, STALE_AFTER_S + 60)
    second = JobLock(tmp_path)
    assert second.acquire()
    first.release()
    assert second.path.exists() and not JobLock(tmp_path).acquire()
    assert "taken over" in capsys.readouterr().err
    second.release()
    assert not second.path.exists()


# 3: an interrupted force=true redo


def test_an_interrupted_forced_redo_never_leaves_the_earlier_result_beside_new_predictions(
    done_job, tmp_path, monkeypatch
):
    forced = copy_of(done_job, "force=true", results_dir=tmp_path)
    predictions = forced.dir / "predictions" / "vt.jsonl"
    # the predictions the earlier result was scored on, unlike any the redo writes
    records = [{**json.loads(line), "pred": "earlier"} for line in predictions.read_text().splitlines()]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    earlier_result, earlier_predictions = forced.result_path.read_bytes(), predictions.read_text()

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the redo wrote its predictions, before its result

    with monkeypatch.context() as patch:
        patch.setattr(Job, "_rows", interrupted)
        with pytest.raises(KeyboardInterrupt):
            forced.run()
    if forced.result_path.exists():  # the earlier result stands only with the predictions it was scored on
        assert forced.result_path.read_bytes() == earlier_result
        assert predictions.read_text() == earlier_predictions
    else:
        assert not forced.done
    assert forced.run() == forced.result_path  # a finished redo replaces both
    assert predictions.read_text() != earlier_predictions
    assert read_result(forced.result_path, forced.job_id)["rows"]
    assert sorted(p.name for p in forced.dir.iterdir()) == ["predictions", "result.json"]


# 4: a stale summary


def test_a_folder_without_results_keeps_no_summary_table(done_job, tmp_path):
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    shutil.copytree(done_job.dir, sweep_dir / done_job.job_id)
    assert not write_summary(sweep_dir).empty
    assert (sweep_dir / "summary.csv").exists() and (sweep_dir / "summary.md").exists()
    (sweep_dir / done_job.job_id / "result.json").unlink()
    assert write_summary(sweep_dir).empty
    assert not (sweep_dir / "summary.csv").exists() and not (sweep_dir / "summary.md").exists()


# 5: Ctrl-C


def test_ctrl_c_in_a_job_is_one_line_exit_130_and_releases_the_lock(tmp_path, monkeypatch, capsys):
    def ctrl_c(self):
        assert (self.dir / LOCK_NAME).exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(Job, "_compute", ctrl_c)
    cfg = config(results_dir=tmp_path)
    try:
        with pytest.raises(SystemExit) as exit_:
            run_job(cfg, multirun=True)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped run_job (a traceback)")
    assert exit_.value.code == 130
    interrupted = Job.from_config(cfg)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert interrupted.job_id in line and "interrupted" in line and "finished results are kept" in line
    assert not (interrupted.dir / LOCK_NAME).exists()
    assert not (interrupted.dir / "failed.json").exists()  # an interrupt is no failure


@pytest.mark.slow
def test_ctrl_c_of_run_py_multirun_is_one_line_and_exit_130(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    args = [*FAST, "benchmark.n=50", f"results_dir={tmp_path}", "sweep=s"]
    sweep = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "-m", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job ignores SIGINT and its children inherit that: give run.py Ctrl-C back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        while not [p for p in (tmp_path / "s").glob(f"*/{LOCK_NAME}") if read_owner(p)]:
            assert time.monotonic() < deadline and sweep.poll() is None, "the job never started"
            time.sleep(0.2)
        (lock,) = (tmp_path / "s").glob(f"*/{LOCK_NAME}")
        time.sleep(1)  # into the job's work, past taking the lock
        sweep.send_signal(signal.SIGINT)
        _, err = sweep.communicate(timeout=120)
    finally:
        sweep.kill()
        sweep.wait()
    assert sweep.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "interrupted" in line]
    assert lock.parent.name in line
    assert not lock.exists()
