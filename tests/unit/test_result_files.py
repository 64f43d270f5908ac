"""Result files a sweep can trust: validated on read, durable and group-readable on write, locked while computed."""

from __future__ import annotations

import json
import os
import platform
import stat
import subprocess
import sys
import time

import pytest

from eval import results
from eval.joblock import LOCK_NAME, STALE_AFTER_S, JobLock, live_owner
from eval.results import SCHEMA_VERSION, InvalidResult, load_rows, read_predictions, read_result
from mustafar.procs import pid_alive

JOB = "tiny_ruler1024_dense_mask_0123abcd"


def good_result(job_id: str = JOB) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "job_id": job_id,
        "identity": {},
        "rows": [{"task": "vt", "value": 1.0}],
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is not a readable result"),
        ('{"schema": 1, "job_id": "x", "rows": [', "is not a readable result"),
        ("[1, 2]", "is not a result object"),
        (json.dumps({**good_result(), "schema": None}), "has schema=None"),
        (json.dumps({**good_result(), "schema": "1"}), "has schema='1'"),
        (json.dumps({**good_result(), "schema": SCHEMA_VERSION + 1}), f"has schema={SCHEMA_VERSION + 1}"),
        (json.dumps(good_result("other_job")), "belongs to job 'other_job'"),
        (json.dumps({**good_result(), "rows": None}), "has no list of rows"),
    ],
)
def test_invalid_result_is_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / JOB / "result.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(InvalidResult) as err:
        read_result(path, JOB)
    assert str(path) in str(err.value) and message in str(err.value)


def test_valid_result_reads_back(tmp_path):
    path = tmp_path / "result.json"
    results.write_json(path, good_result())
    assert read_result(path, JOB) == good_result()


def test_summary_leaves_out_a_corrupt_result_with_a_warning_naming_it(tmp_path, capsys):
    results.write_json(tmp_path / JOB / "result.json", good_result())
    broken = tmp_path / "broken_job" / "result.json"
    broken.parent.mkdir()
    broken.write_text('{"schema": 1, "job_')
    rows = load_rows(tmp_path)
    assert len(rows) == 1 and rows["task"].tolist() == ["vt"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(broken) in err[0] and "left out of the table" in err[0]


@pytest.mark.parametrize("content", ["", '{"pred": "a"}\n{"pred": "b', "\xff\xfe garbage"])
def test_truncated_predictions_are_refused_naming_the_file(tmp_path, content):
    path = tmp_path / "vt.jsonl"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(InvalidResult, match=str(path)):
        read_predictions(path)


def test_atomic_write_is_fsynced_and_group_readable(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    old_umask = os.umask(0o077)  # even a strict umask must not hide results from the group
    try:
        path = tmp_path / "sweep" / "summary.md"
        results.atomic_write_text(path, "table\n")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "table\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert synced == [False, True]  # the file before the rename, then its folder
    assert [p.name for p in path.parent.iterdir()] == ["summary.md"]  # no temp file left


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_lock_on_a_job_is_refused_and_released_lock_is_free(tmp_path):
    first, second = JobLock(tmp_path), JobLock(tmp_path)
    assert first.acquire()
    record = json.loads((tmp_path / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"] == platform.node()
    assert not second.acquire()
    assert second.owner().pid == os.getpid()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    assert second.acquire()
    second.release()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    pid = dead_pid()
    assert not pid_alive(pid)
    lock_file = tmp_path / LOCK_NAME
    lock_file.write_text(json.dumps({"pid": pid, "host": platform.node(), "started": time.time()}))
    assert live_owner(lock_file) is None
    lock = JobLock(tmp_path)
    assert lock.acquire()
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()


def age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.parametrize("content", ["", json.dumps({"pid": 1, "host": "elsewhere", "started": 0.0})])
def test_lock_is_trusted_while_its_heartbeat_is_fresh_and_taken_over_after(tmp_path, content):
    """Another node's PID cannot be checked (a killed SLURM job); a half-written file may be mid-write."""
    lock_file = tmp_path / LOCK_NAME
    lock_file.write_text(content)
    age(lock_file, STALE_AFTER_S - 60)
    assert not JobLock(tmp_path).acquire()
    age(lock_file, STALE_AFTER_S + 60)
    lock = JobLock(tmp_path)
    assert lock.acquire()
    lock.release()


def test_held_lock_keeps_beating(tmp_path, monkeypatch):
    monkeypatch.setattr("eval.joblock.HEARTBEAT_S", 0.05)
    lock = JobLock(tmp_path)
    assert lock.acquire()
    age(lock.path, 3600)
    time.sleep(0.5)
    assert time.time() - lock.path.stat().st_mtime < 5
    assert JobLock(tmp_path).owner().pid == os.getpid()
    lock.release()
