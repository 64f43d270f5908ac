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
from eval.longbench.benchmark import score_records
from eval.results import SCHEMA_VERSION, InvalidResult, load_rows, read_predictions, read_result
from eval.rows import score_rows
from eval.tables import summary_frame
from mustafar.procs import pid_alive
from tests.unit import fake_results

JOB = "tiny_ruler1024_dense_mask_0123abcd"


def good_result(job_id: str = JOB) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "job_id": job_id,
        "identity": {},
        "rows": [
            {
                "run_id": job_id,
                "kind": "task",
                "task": "vt",
                "metric": "string_match_all",
                "value": 1.0,
                "n": 2,
            }
        ],
    }


def with_row(**fields) -> str:
    """A result whose one row is the good row with `fields` changed (None: left out)."""
    row = {**good_result()["rows"][0], **fields}
    return json.dumps({**good_result(), "rows": [{k: v for k, v in row.items() if v is not None}]})


def with_rows(*changes: dict) -> str:
    """A result of the good row and, after it, one copy of it per change (the row with those fields changed)."""
    row = good_result()["rows"][0]
    return json.dumps({**good_result(), "rows": [row, *({**row, **c} for c in changes)]})


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
        # rows a table would drop without a word (it groups by run_id) or could not read
        (with_row(run_id=None), "row 0 lacks the field(s) ['run_id']"),
        (with_row(run_id="x"), "row 0 belongs to run 'x'"),
        (with_row(foo=1), "row 0 has fields no result row has: ['foo']"),
        # rows a table would crash on, or show as a CI without a mean
        (with_row(value="abc"), "row 0 has value='abc'"),
        (with_row(value=float("nan")), "row 0 has value=nan"),
        (with_row(value=None), "row 0 lacks the field(s) ['value']"),
        (with_row(n=True), "row 0 has n=True"),
        (with_row(ci_low="0.5"), "row 0 has ci_low='0.5'"),
        (
            json.dumps({**good_result(), "rows": [{"run_id": JOB}]}),
            "lacks the field(s) ['kind', 'task', 'metric'",
        ),
        # one score twice: summary.md would show one copy, the report the other
        (with_rows({"value": 0.0}), "row 1 repeats row 0's score (task 'vt', metric 'string_match_all')"),
        (with_rows({"metric": "other"}), "row 1 repeats row 0's score (task 'vt', metric 'other')"),
        (
            with_rows({"metric": "m@8k+"}, {"metric": "m@8k+"}),
            "row 2 repeats row 1's score (task 'vt', metric",
        ),
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


def test_one_scores_rows_of_every_length_bucket_read_back(tmp_path):
    """An overall row and its LongBench-E bucket rows share kind and task, yet are no repeats."""
    path = tmp_path / "result.json"
    results.write_json(path, json.loads(with_rows({"metric": "m@0-4k"}, {"metric": "m@4-8k"})))
    assert len(read_result(path, JOB)["rows"]) == 3


def test_a_longbench_e_job_with_an_empty_bucket_is_finished_and_tabled(tmp_path):
    """Two records under 4k words leave buckets 4-8k and 8k+ empty: the job writes rows for its score and its one
    bucket (100: both answers right), none for the empty ones. A NaN row there made read_result refuse the file,
    so the job was never done (rerun forever) and left out of the tables."""
    records = [{"pred": "yes", "answers": ["yes"], "length": 1000} for _ in range(2)]
    job = {
        **fake_results.JOB,
        "run_id": JOB,
        "samples_id": "p",
        "benchmark": "longbench",
        "benchmark_length": None,
    }
    job["benchmark_config"] = {"name": "longbench", "longbench_e": True}
    rows = score_rows(job, "longbench", score_records("qasper", records, longbench_e=True))
    path = tmp_path / JOB / "result.json"
    results.write_json(path, {"schema": SCHEMA_VERSION, "job_id": JOB, "rows": [r.to_dict() for r in rows]})
    assert results.valid_result(path, JOB, "redoing the job") is not None
    table = summary_frame(load_rows(tmp_path)).set_index("column")["value"]
    assert table.to_dict() == {"qasper": 100.0, "qasper qa_f1_score@0-4k": 100.0, "avg": 100.0,
                               "avg_categories": 100.0, "Single-Doc QA": 100.0}  # fmt: skip


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


def test_another_hosts_lock_is_trusted_while_its_heartbeat_is_fresh_and_taken_over_after(tmp_path, capsys):
    """Another node's PID cannot be checked (a killed SLURM job): its heartbeat decides; the takeover is said."""
    lock_file = tmp_path / LOCK_NAME
    lock_file.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0.0}))
    age(lock_file, STALE_AFTER_S - 60)
    assert not JobLock(tmp_path).acquire()
    age(lock_file, STALE_AFTER_S + 60)
    lock = JobLock(tmp_path)
    assert lock.acquire()
    assert "took over the stale lock of pid 1 on elsewhere" in capsys.readouterr().err
    lock.release()


def test_an_unreadable_lock_blocks_only_while_it_could_be_mid_write(tmp_path):
    """Locks are written whole before they appear, so an empty one is a writer that died mid-write (or an older
    format being written): it blocked its job for ten minutes, now for UNREADABLE_STALE_S."""
    from eval.joblock import UNREADABLE_STALE_S

    lock_file = tmp_path / LOCK_NAME
    lock_file.write_text("")
    assert not JobLock(tmp_path).acquire()
    age(lock_file, UNREADABLE_STALE_S + 5)
    lock = JobLock(tmp_path)
    assert lock.acquire()
    assert read_owner_pid(lock.path) == os.getpid()
    lock.release()


def read_owner_pid(path) -> int:
    return json.loads(path.read_text())["pid"]


def test_a_live_owner_on_this_host_keeps_its_lock_however_old_its_heartbeat(tmp_path):
    """A stopped (SIGSTOP) or suspended sweep still owns its job: another sweep must not compute it beside it."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_file = tmp_path / LOCK_NAME
        from mustafar.procs import boot_id, pid_start

        lock_file.write_text(json.dumps({"pid": proc.pid, "host": platform.node(), "started": time.time() - 7200,
                                         "token": "t", "boot_id": boot_id(), "pid_start": pid_start(proc.pid)}))  # fmt: skip
        age(lock_file, STALE_AFTER_S * 3)
        assert live_owner(lock_file).pid == proc.pid
        assert not JobLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    assert JobLock(tmp_path).acquire()  # its owner is gone now


def _race(folder: str, start: float, out) -> None:
    lock = JobLock(folder)
    while time.time() < start:
        pass
    got = lock.acquire()
    time.sleep(0.05)  # hold it while the other one tries
    out.put(got)
    if got:
        lock.release()


def test_two_sweeps_racing_for_one_stale_lock_never_both_take_it(tmp_path):
    """Two processes released at the same instant onto a lock of a dead process: one takes it over, the other
    finds the new owner's lock. Old behaviour: both took it in about 7 % of such races."""
    import multiprocessing as mp

    from mustafar.procs import boot_id

    ctx = mp.get_context("fork")
    dead = ctx.Process(target=int)
    dead.start()
    dead.join()
    for trial in range(30):
        folder = tmp_path / str(trial)
        folder.mkdir()
        (folder / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": platform.node(), "started": time.time(),
                                                     "token": "x", "boot_id": boot_id(), "pid_start": 1}))  # fmt: skip
        out, start = ctx.Queue(), time.time() + 0.05
        racers = [ctx.Process(target=_race, args=(str(folder), start, out)) for _ in range(2)]
        for r in racers:
            r.start()
        for r in racers:
            r.join()
        got = [out.get() for _ in racers]
        assert got.count(True) == 1, f"trial {trial}: {got}"


def test_held_lock_keeps_beating(tmp_path, monkeypatch):
    monkeypatch.setattr("eval.joblock.HEARTBEAT_S", 0.05)
    lock = JobLock(tmp_path)
    assert lock.acquire()
    age(lock.path, 3600)
    time.sleep(0.5)
    assert time.time() - lock.path.stat().st_mtime < 5
    assert JobLock(tmp_path).owner().pid == os.getpid()
    lock.release()
