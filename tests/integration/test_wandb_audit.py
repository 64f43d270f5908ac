"""W&B audit on the tiny model, offline: what a dashboard reads from the per-job runs and the sweep's summary run,
checked against the result.json rows on disk (parsed from the runs' own .wandb files, not from the code that wrote
them). Each job's run carries the full KV config, its per-task scores, averages, CIs, measured sparsity and bytes,
and its results table with the rows' own values; a redo resumes the job's run instead of adding a second one; a
failed job is listed in the summary run; W&B missing or failing never loses a result nor ends a sweep in a
traceback."""

from __future__ import annotations

import json
import math
import struct
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from mustafar.config import KVConfig
from tests.integration import sweep_jobs
from tests.integration.sweep_jobs import job

FAST = [
    "model=tiny",
    "benchmark.tasks=[vt]",
    "benchmark.n=1",
    "device=cpu",
    "logger=wandb",
    "logger.mode=offline",
]
# value_dtype and eviction set in one job each, at their default in the others
KVS = ("dense", "k50v50_fp8", "snapkv840")
NESTED = ("versions", "benchmark_config", "model_config", "k_layer_sparsity", "v_layer_sparsity")  # JSON text
MEASURED = (
    "k_sparsity_measured",
    "v_sparsity_measured",
    "kv_bytes",
    "kv_payload_bytes",
    "dense_kv_bytes",
    "kv_evicted_bytes",
    "prompt_tokens",
    "new_tokens",
)


def run_py(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return sweep_jobs.run_py(
        *args, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}, timeout=300
    )


# the .wandb file: a leveldb-style log (7-byte file header, 32 KiB blocks, records of
# crc32 / length / type chunks) of wandb Record protobufs


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def offline_runs(results_dir: Path) -> list[dict]:
    """Every offline run folder under results_dir/wandb: id, name, group, job_type, config, summary, exit code."""
    runs = []
    for path in sorted((results_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        run = {"dir": path.parent, "config": {}, "summary": {}, "exit_code": None}
        for record in _records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run |= {"id": r.run_id, "name": r.display_name, "group": r.run_group, "job_type": r.job_type}
                run["config"] |= {i.key: json.loads(i.value_json) for i in r.config.update}
            elif kind == "config":
                run["config"] |= {i.key: json.loads(i.value_json) for i in record.config.update}
            elif kind == "summary":
                for item in record.summary.update:
                    key = "/".join(item.nested_key) if item.nested_key else item.key
                    run["summary"][key] = json.loads(item.value_json)
            elif kind == "exit":
                run["exit_code"] = record.exit.exit_code
        run["config"].pop("_wandb", None)
        runs.append(run)
    return runs


def logged_table(run: dict, key: str) -> list[dict]:
    table = json.loads((run["dir"] / "files" / run["summary"][f"{key}/path"]).read_text())
    return [dict(zip(table["columns"], line)) for line in table["data"]]


def results(sweep_dir: Path) -> dict[str, dict]:
    return {
        (data := json.loads(p.read_text()))["job_id"]: data for p in sorted(sweep_dir.glob("*/result.json"))
    }


def run_sweep(results_dir: Path) -> Path:
    proc = run_py("-m", *FAST, f"results_dir={results_dir}", "sweep=s", f"kv={','.join(KVS)}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return results_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return run_sweep(tmp_path_factory.mktemp("wandb_sweep"))


def job_runs(results_dir: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in offline_runs(results_dir):
        if run["job_type"] != "summary":
            out.setdefault(run["name"], []).append(run)
    return out


def test_each_job_run_carries_its_full_identity(sweep):
    done = results(sweep / "s")
    runs = job_runs(sweep)
    assert sorted(runs) == sorted(done) and len(done) == len(KVS)
    knobs = [f.name for f in fields(KVConfig)]
    for job_id, result in done.items():
        (run,) = runs[job_id]
        row = result["rows"][0]
        assert run["group"] == "s" and run["job_type"] == "job" and run["exit_code"] == 0
        config = run["config"]
        assert config["model"] == result["identity"]["model"]
        assert config["benchmark"] == result["identity"]["benchmark"]
        assert config["benchmark"]["tasks"] == ["vt"] and config["benchmark"]["n"] == 1
        assert config["seed"] == row["seed"] == 42 and config["device"] == "cpu"
        # every kv knob, also those at their default (absent from the job id): a filter on value_dtype or evict
        # must find the dense job too
        assert sorted(config["kv"]) == sorted(knobs), job_id
        for knob in knobs:
            assert config["kv"][knob] == (row[knob] if row[knob] is not None else []), (job_id, knob)
    by_kv = {r["config"]["kv"]["value_dtype"]: r for rs in runs.values() for r in rs}
    assert set(by_kv) == {"native", "fp8"}
    assert sorted(r[0]["config"]["kv"]["evict"] for r in runs.values()) == ["none", "none", "snapkv"]


def test_job_metrics_are_the_result_rows(sweep):
    """Per-task scores and averages with n and CI, measured sparsity and bytes: the rows' values, the same keys
    in every job, no NaN."""
    done = results(sweep / "s")
    runs = job_runs(sweep)
    keys = set()
    for job_id, result in done.items():
        (run,) = runs[job_id]
        summary = run["summary"]
        expected = {}
        for row in result["rows"]:
            expected |= {
                row["task"]: row["value"],
                f"{row['task']}/ci_low": row["ci_low"],
                f"{row['task']}/ci_high": row["ci_high"],
                f"{row['task']}/n": row["n"],
            }
        expected |= {m: result["rows"][0][m] for m in MEASURED}
        assert {k: summary.get(k, "missing") for k in expected} == expected, job_id
        assert not [k for k, v in summary.items() if isinstance(v, float) and math.isnan(v)]
        keys.add(frozenset(k for k in summary if not k.startswith(("_", "results"))))
        # the table: the rows themselves (numbers as numbers, null as null), per-sample lists left out
        table = logged_table(run, "results")
        assert len(table) == len(result["rows"])
        for got, row in zip(table, result["rows"]):
            want = {k: v for k, v in row.items() if k != "samples"}
            got = {k: json.loads(v) if k in NESTED and isinstance(v, str) else v for k, v in got.items()}
            assert got == want, job_id
    assert len(keys) == 1, keys  # panels line up across jobs


def test_summary_run_holds_the_summary_md_table(sweep):
    (summary_run,) = [r for r in offline_runs(sweep) if r["job_type"] == "summary"]
    assert summary_run["group"] == "s" and summary_run["name"] == "s-summary"
    table = logged_table(summary_run, "summary")
    done = results(sweep / "s")
    want = {
        (job_id, row["task"]): (row["value"], row["ci_low"], row["ci_high"], row["n"])
        for job_id, result in done.items()
        for row in result["rows"]
    }
    got = {(r["run_id"], r["column"]): (r["value"], r["ci_low"], r["ci_high"], r["n"]) for r in table}
    assert got == want
    assert summary_run["summary"]["unfinished/nrows"] == 0


def test_a_failed_job_is_listed_in_the_summary_run(tmp_path):
    broken = job("kv=k50", "logger=wandb", "sweep=s", results_dir=tmp_path)
    broken.dir.mkdir(parents=True)
    (broken.dir / "predictions").write_text("not a folder")  # the job fails writing its predictions
    proc = run_py("-m", *FAST, f"results_dir={tmp_path}", "sweep=s", "kv=dense,k50")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (broken.dir / "failed.json").exists() and not broken.result_path.exists()
    assert list(job_runs(tmp_path)) == [next(iter(results(tmp_path / "s")))]  # no run for the failed job
    (summary_run,) = [r for r in offline_runs(tmp_path) if r["job_type"] == "summary"]
    assert summary_run["summary"]["unfinished/nrows"] == 1
    (line,) = logged_table(summary_run, "unfinished")
    assert line["job"] == broken.job_id and line["state"] == "failed"


def test_without_the_wandb_package_the_sweep_keeps_results_and_warns(tmp_path):
    stub = tmp_path / "stub" / "wandb"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')\n"
    )
    results_dir = tmp_path / "results"
    proc = run_py(
        "-m", *FAST, f"results_dir={results_dir}", "sweep=s", "kv=dense", env={"PYTHONPATH": str(stub.parent)}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(results(results_dir / "s")) == 1 and (results_dir / "s" / "summary.md").exists()
    lines = proc.stderr.splitlines()
    warnings = [line for line in lines if "W&B" in line and "No module named 'wandb'" in line]
    # one line for the job's run, one for the summary run
    assert len(warnings) == 2 and all(w.startswith("[mustafar] warning: ") for w in warnings)


def test_a_run_whose_logging_fails_is_marked_failed(sweep, tmp_path, monkeypatch):
    """W&B failing after its run began (here: building the table) leaves that run failed, not finished-looking."""
    import wandb

    from eval import wandb_log
    from eval.rows import ResultRow

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = next(iter(results(sweep / "s").values()))
    rows = [ResultRow.from_dict(r) for r in result["rows"]]

    def broken(*args, **kwargs):
        raise RuntimeError("table refused")

    monkeypatch.setattr(wandb, "Table", broken)
    logger = {"name": "wandb", "mode": "offline", "project": "mustafar-test"}
    with pytest.raises(RuntimeError, match="table refused"):
        wandb_log.log_job(logger, tmp_path, "s", result["job_id"], result["identity"], rows)
    (run,) = offline_runs(tmp_path)
    assert run["name"] == result["job_id"] and run["exit_code"] not in (None, 0)


def test_skip_logs_nothing_and_a_redo_resumes_the_jobs_run(tmp_path):
    sweep = run_sweep(tmp_path)  # its own: it adds runs
    before = job_runs(sweep)
    again = run_py("-m", *FAST, f"results_dir={sweep}", "sweep=s", f"kv={','.join(KVS)}")  # all skipped
    assert again.returncode == 0 and again.stdout.count("[mustafar] skip") == len(KVS), again.stderr[-3000:]
    assert {k: len(v) for k, v in job_runs(sweep).items()} == {k: 1 for k in before}
    redo = run_py(*FAST, f"results_dir={sweep}", "sweep=s", f"kv={KVS[1]}", "force=true")
    assert redo.returncode == 0, redo.stderr[-3000:]
    runs = job_runs(sweep)
    # one offline folder per attempt, of one run (`wandb sync` merges them)
    (redone,) = [k for k, v in runs.items() if len(v) == 2]
    assert "fp8" in redone and len({r["id"] for r in runs[redone]}) == 1
    assert len({rs[0]["id"] for rs in runs.values()}) == len(KVS)
    # the redo's run holds the new result's numbers
    result = results(sweep / "s")[redone]
    latest = max(runs[redone], key=lambda r: r["dir"].name)
    assert latest["summary"]["job_seconds"] == result["rows"][0]["job_seconds"]
