"""Fault injection on the tiny model: corrupt results and predictions, failing and locked jobs, bad configs in a
sweep, pruning that never happened, seeds and devices in the job identity, bad data before any model work."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from eval import registry
from eval.job import Job
from eval.joblock import LOCK_NAME
from eval.results import read_result
from eval.sweep import PlannedJob, plan, run_job, unfinished
from mustafar import models
from mustafar.config import ConfigError
from tests.integration.sweep_jobs import CONF, FAST, ROOT, config, job, run_py

FIXTURES = ROOT / "tests" / "fixtures" / "longbench" / "data"


def copy_job(src: Job, tmp_path: Path) -> Job:
    copy = job(results_dir=tmp_path)
    shutil.copytree(src.dir, copy.dir)
    return copy


# item 2: a result is done only when it validates


@pytest.mark.parametrize("content", ["", '{"schema": 1, "job_id": "', "{}"])
def test_corrupt_result_is_redone_with_a_warning_naming_it(finished, tmp_path, capsys, content):
    again = copy_job(finished, tmp_path)
    again.result_path.write_text(content)
    assert not again.done
    capsys.readouterr()
    assert again.run() == again.result_path  # redone (from the saved predictions), not skipped
    err = capsys.readouterr().err
    assert f"warning: {again.result_path}" in err and err.count("redoing the job") == 1
    assert read_result(again.result_path, again.job_id)["rows"]


def test_truncated_predictions_are_regenerated_with_a_warning(finished, tmp_path, capsys):
    again = copy_job(finished, tmp_path)
    predictions = again.dir / "predictions" / "vt.jsonl"
    good = predictions.read_text()
    predictions.write_text(good[: len(good) // 2])  # cut mid-record
    again.result_path.unlink()
    assert again.run() == again.result_path
    assert f"warning: {predictions} is corrupt" in capsys.readouterr().err
    assert predictions.read_text() == good  # regenerated (greedy decoding: the same text)


def test_corrupt_stats_file_is_regenerated(finished, tmp_path, capsys):
    again = copy_job(finished, tmp_path)
    stats = again.dir / "predictions" / "vt.stats.json"
    stats.write_text('{"k_kept": ')
    again.result_path.unlink()
    assert again.run() == again.result_path
    assert f"warning: {stats} is corrupt" in capsys.readouterr().err
    json.loads(stats.read_text())


def test_another_jobs_folder_is_regenerated_not_rescored_under_this_id(finished, tmp_path, capsys):
    """A dense job's folder copied under a pruned job's id: its result.json is refused, and so are its
    predictions (their stats file names the job they belong to), so the pruned job really runs."""
    pruned = job("kv.k_sparsity=0.5", results_dir=tmp_path)
    shutil.copytree(finished.dir, pruned.dir)
    assert pruned.run() == pruned.result_path
    err = capsys.readouterr().err
    assert f"belongs to job {finished.job_id!r}" in err and "regenerating that task" in err
    rows = read_result(pruned.result_path, pruned.job_id)["rows"]
    assert all(r["k_sparsity_measured"] > 0 for r in rows)


def test_predictions_cut_at_a_line_boundary_are_regenerated(tmp_path, capsys):
    two = job("benchmark.n=2", results_dir=tmp_path)
    two.run()
    predictions = two.dir / "predictions" / "vt.jsonl"
    good = predictions.read_text()
    predictions.write_text(good.splitlines(keepends=True)[0])  # one whole record of two
    two.result_path.unlink()
    assert two.run() == two.result_path
    assert f"{predictions} holds 1 records, not one per sample of the task's 2" in capsys.readouterr().err
    assert predictions.read_text() == good
    assert {r["n"] for r in read_result(two.result_path, two.job_id)["rows"]} == {2}


# item 4: pruning that never happened, one seed, device and dtype in the identity


def test_window_longer_than_the_sequence_marks_the_row(tmp_path, capsys):
    inactive = job("kv.k_sparsity=0.5", "kv.window=1000000000", results_dir=tmp_path)
    rows = read_result(inactive.run(), inactive.job_id)["rows"]
    assert all(r["pruning_inactive"] for r in rows)
    assert all(r["policy"].endswith("[not pruned]") for r in rows)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "measured 0 sparsity" in line]
    assert len(warnings) == 1 and "kv.k_sparsity=0.5" in warnings[0] and "kv.window=1000000000" in warnings[0]


def test_a_budget_longer_than_every_prompt_marks_the_row(tmp_path, capsys):
    """snapkv with a budget past the prompt evicts nothing and scores as dense: labelled, as [not pruned] is."""
    idle = job("kv.evict=snapkv", "kv.token_budget=100000", results_dir=tmp_path)
    rows = read_result(idle.run(), idle.job_id)["rows"]
    assert all(r["policy"].endswith("[not evicted]") and r["kv_evicted_bytes"] == 0 for r in rows)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "evicted nothing" in line]
    assert len(warnings) == 1 and "kv.token_budget=100000" in warnings[0]
    evicting = job("kv.evict=snapkv", "kv.token_budget=200", results_dir=tmp_path)
    rows = read_result(evicting.run(), evicting.job_id)["rows"]
    assert not any("[not evicted]" in r["policy"] for r in rows) and rows[0]["kv_evicted_bytes"] > 0


def test_dense_and_pruned_rows_are_not_marked(finished):
    assert not any(r["pruning_inactive"] for r in read_result(finished.result_path)["rows"])


def test_top_level_seed_drives_the_ruler_samples(tmp_path):
    """`-m seed=1,2` must give two different sets of prompts, not the same prompts under two ids."""
    one, two = (job(f"seed={s}", "benchmark.tasks=[niah_single_1]", results_dir=tmp_path) for s in (1, 2))
    assert one.job_id != two.job_id
    loaded = models.load(one.model, "cpu")
    prompts = [
        [s.input_ids for s in registry.build(j.benchmark, loaded, j.seed).samples("niah_single_1")]
        for j in (one, two)
    ]
    assert prompts[0] != prompts[1]


def test_benchmark_seed_is_refused_in_favour_of_seed(tmp_path):
    cfg = config(results_dir=tmp_path)
    cfg["benchmark"]["seed"] = 3
    with pytest.raises(ConfigError, match=r"benchmark.seed is not a key.*seed="):
        Job.from_config(cfg)


def test_seed_is_not_identity_where_the_benchmark_ignores_it(tmp_path):
    ids = {
        job("benchmark=longbench", f"benchmark.data_dir={FIXTURES}", "benchmark.tasks=[trec]", f"seed={s}",
            results_dir=tmp_path).job_id
        for s in (1, 2)
    }  # fmt: skip
    assert len(ids) == 1


def test_device_and_resolved_dtype_are_part_of_the_identity(tmp_path, monkeypatch):
    cpu = job("device=auto", results_dir=tmp_path)
    assert cpu.device == "cpu" and cpu.identity["device"] == "cpu"
    assert cpu.identity["model"]["dtype"] == "float32"  # tiny is float32 everywhere
    auto_cpu = job("model=smollm2", "device=cpu", results_dir=tmp_path)
    assert auto_cpu.identity["model"]["dtype"] == "float32"
    monkeypatch.setattr(models, "cuda_available", lambda: True)
    auto_gpu = job("model=smollm2", "device=auto", results_dir=tmp_path)
    assert auto_gpu.device == "cuda" and auto_gpu.identity["model"]["dtype"] == "bfloat16"
    assert auto_gpu.job_id != auto_cpu.job_id


def test_batch_size_is_not_part_of_the_identity(tmp_path):
    cfg = config(results_dir=tmp_path)
    base = Job.from_config(cfg).job_id
    cfg["benchmark"]["batch_size"] = 8
    assert Job.from_config(cfg).job_id == base


# item 5: a failing job is recorded and the sweep goes on


def test_failing_job_in_a_multirun_records_its_traceback_and_returns(tmp_path, monkeypatch, caplog):
    def bug(self):
        raise RuntimeError("a bug deep in the harness")

    monkeypatch.setattr(Job, "_compute", bug)
    cfg = config(results_dir=tmp_path)
    with caplog.at_level(logging.ERROR, logger="mustafar"):
        assert run_job(cfg, multirun=True)[0] == 1
    failed_job = Job.from_config(cfg)
    failure = json.loads((failed_job.dir / "failed.json").read_text())
    assert failure["error"] == "RuntimeError: a bug deep in the harness"
    assert "Traceback" in failure["traceback"] and "in bug" in failure["traceback"]
    assert "a bug deep in the harness" in caplog.text  # the traceback is in the job's log
    assert not (failed_job.dir / LOCK_NAME).exists()
    (item,) = unfinished([PlannedJob([], job=failed_job)])
    assert item.state == "failed" and "a bug deep in the harness" in item.detail
    with pytest.raises(RuntimeError):  # a single run keeps the real traceback
        run_job(cfg, multirun=False)


def test_user_error_at_run_time_is_one_line(tmp_path, monkeypatch, capsys):
    def missing(self):
        raise models.ModelUnavailable("model.path='/x' is not a folder with a transformers checkpoint")

    monkeypatch.setattr(Job, "_compute", missing)
    assert run_job(config(results_dir=tmp_path), multirun=True)[0] == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "model.path='/x'" in line


def test_success_clears_an_old_failure(finished, tmp_path):
    again = copy_job(finished, tmp_path)
    again.result_path.unlink()
    (again.dir / "failed.json").write_text("{}")
    again.run()
    assert not (again.dir / "failed.json").exists()


def sweep_config(tmp_path: Path, *sweep: str):
    """The multirun config Hydra hands to on_multirun_start: the command line in hydra.overrides.task."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*FAST, f"results_dir={tmp_path}"], return_hydra_config=True)
    cfg.hydra.overrides.task = [*FAST, f"results_dir={tmp_path}", *sweep]
    cfg.hydra.job.config_name = "config"
    return cfg


def test_every_job_of_a_sweep_is_validated_up_front(tmp_path):
    cfg = sweep_config(tmp_path, "kv.k_sparsity=0,1.5,0.5")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        planned = plan(cfg)
    assert [p.overrides[-1] for p in planned] == ["kv.k_sparsity=0", "kv.k_sparsity=1.5", "kv.k_sparsity=0.5"]
    assert planned[0].job and planned[2].job and planned[1].job is None
    assert "kv.k_sparsity=1.5 is outside [0, 1)" in planned[1].error
    assert planned[1].label == "kv.k_sparsity=1.5"  # what tells the jobs apart, not the whole command line
    states = [u.state for u in unfinished(planned)]
    assert states == ["not finished", "invalid config", "not finished"]


# item 6: slow checks before the model loads


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(models, "load", refuse)


def test_unwritable_results_dir_fails_before_the_model_loads(tmp_path, no_model):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    doomed = job(results_dir=blocker / "results")
    with pytest.raises(ConfigError, match=f"results_dir='{blocker / 'results'}' is not writable"):
        doomed.run()


def test_an_unloadable_tokenizer_is_one_error(tmp_path, monkeypatch, capsys):
    """model.tokenizer=foo offline was a 113-line OSError traceback from the hub client."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _ = run_job(config("model.tokenizer=foo", results_dir=tmp_path), multirun=False)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "model.tokenizer='foo' cannot be loaded" in line


def test_longbench_without_data_or_network_is_one_error_before_the_model_loads(
    tmp_path, no_model, monkeypatch, capsys
):
    """No data_dir and no network: the download's failure was a traceback and exit 1 (a bug's treatment)."""
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("network is unreachable\nmore detail")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setenv("MUSTAFAR_LONGBENCH_CACHE", str(tmp_path / "cache"))
    cfg = config("benchmark=longbench", "benchmark.tasks=[trec]", "benchmark.n=1", results_dir=tmp_path)
    code, job_id = run_job(cfg, multirun=False)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(
        f"error: {job_id}: could not download LongBench data.zip from THUDM/LongBench (network"
    )
    assert "Traceback" not in err and "more detail" not in err


@pytest.mark.parametrize(
    ("damage", "message"),
    [(b'{"input": "q", "context": ', "not valid JSON"), (b"\xff\xfe\x00bad", "not UTF-8")],
)
def test_a_bad_longbench_file_fails_before_the_model_loads(tmp_path, no_model, damage, message):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    (data / "lcc.jsonl").write_bytes((data / "lcc.jsonl").read_bytes() + b"\n" + damage)
    lb = job(
        "benchmark=longbench", f"benchmark.data_dir={data}", "benchmark.tasks=[trec,lcc]", "benchmark.n=null",
        results_dir=tmp_path / "results",
    )  # fmt: skip
    with pytest.raises(ValueError) as err:
        lb.run()
    assert str(data / "lcc.jsonl") in str(err.value) and message in str(err.value)
    assert not (lb.dir / "predictions").exists()  # trec was not generated first


# item 7: a job computed elsewhere is not computed twice


def test_job_locked_by_a_live_process_is_skipped_and_reported(tmp_path, no_model, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = job(results_dir=tmp_path)
        busy.dir.mkdir(parents=True)
        lock = {"pid": other.pid, "host": platform.node(), "started": time.time()}
        (busy.dir / LOCK_NAME).write_text(json.dumps(lock))
        assert busy.run() is None
        assert f"running elsewhere (pid {other.pid} on {platform.node()}" in capsys.readouterr().out
        (item,) = unfinished([PlannedJob([], job=busy)])
        assert item.state == "running elsewhere" and str(other.pid) in item.detail
        # a single run (no multirun summary to list it) says so and exits non-zero: it has no result to show
        assert run_job(config(results_dir=tmp_path), multirun=False) == (1, busy.job_id)
        assert f"error: {busy.job_id} is running elsewhere" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    (item,) = unfinished([PlannedJob([], job=busy)])  # its owner died: no longer running anywhere
    assert item.state == "not finished"


# item 9: errors a user can act on


def test_readme_local_model_form_composes(tmp_path):
    folder = tmp_path / "ckpt"
    from transformers import LlamaConfig

    LlamaConfig(max_position_embeddings=4096).save_pretrained(folder)
    local = job("model=smollm2", "model.source=local", f"model.path={folder}", results_dir=tmp_path)
    assert local.model.source == "local" and local.model.path == str(folder) and local.model.name == "ckpt"


def test_cuda_without_cuda_is_one_line_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "cuda_available", lambda: False)
    with pytest.raises(ConfigError, match="device=cuda but this machine has no CUDA device"):
        job("device=cuda", results_dir=tmp_path)


@pytest.mark.parametrize("value", ["no", "off", "'false'", "1"])
def test_force_is_a_boolean_only(tmp_path, value):
    """`force=no` is a non-empty string: read as a truth value it meant force=true and redid finished jobs."""
    with pytest.raises(ConfigError, match="must be true or false"):
        job(f"force={value}", results_dir=tmp_path)


def test_a_wandb_failure_keeps_the_result_and_fails_nothing(tmp_path, monkeypatch, capsys):
    """The result is written before W&B is called: a logging failure is a warning naming how to log later, not a
    failed job next to a valid result."""
    from eval import wandb_log

    def broken(*args, **kwargs):
        raise RuntimeError("no W&B credentials\nsecond line")

    monkeypatch.setattr(wandb_log, "log_job", broken)
    logged = job("logger=wandb", results_dir=tmp_path)
    assert logged.run() == logged.result_path and logged.done
    assert not (logged.dir / "failed.json").exists()
    err = capsys.readouterr().err
    assert "W&B logging failed (RuntimeError: no W&B credentials)" in err and "--wandb offline" in err


def test_non_integer_seed_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="seed='abc' must be an integer"):
        job("seed=abc", results_dir=tmp_path)


# subprocess end to end


@pytest.mark.parametrize("multirun", [False, True])
def test_run_py_refuses_an_unwritable_results_dir_before_hydra_writes_there(tmp_path, multirun):
    """Hydra makes its own run folder under results_dir before any job code runs; a path under a file made it
    print a NotADirectoryError traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_py(*(["-m"] if multirun else []), *FAST, f"results_dir={blocker / 'results'}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: results_dir='{blocker / 'results'}' is not writable (NotADirectoryError: [Errno 20] Not a "
        f"directory: '{blocker / 'results'}')"
    ]


@pytest.mark.slow
def test_bad_job_in_the_middle_of_a_sweep(tmp_path):
    proc = run_py("-m", *FAST, f"results_dir={tmp_path}", "sweep=s", "kv.k_sparsity=0,1.5,0.5", timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(list((tmp_path / "s").glob("*/result.json"))) == 2  # the job after the bad one ran
    summary = (tmp_path / "s" / "summary.md").read_text()
    assert "K0.5" in summary and "dense" in summary
    assert "invalid config" in summary and "kv.k_sparsity=1.5 is outside [0, 1)" in summary
    assert proc.stderr.splitlines()[0].startswith("error: job [")  # reported before the first job started


@pytest.mark.slow
def test_a_sweep_of_bad_jobs_only_stops_before_launching_them(tmp_path):
    proc = run_py("-m", *FAST, f"results_dir={tmp_path}", "sweep=s", "kv.k_sparsity=1.5,-0.1", timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: job [kv.k_sparsity=1.5]: kv.k_sparsity=1.5 is outside [0, 1)")
    assert lines[1].startswith("error: job [kv.k_sparsity=-0.1]")
    assert lines[2] == "[mustafar] no job of the sweep has a valid config (above): nothing runs"
    assert len(lines) == 3  # no job was launched to print its error again
    one = run_py("-m", *FAST, f"results_dir={tmp_path}", "sweep=t", "kv.k_sparsity=1.5", timeout=300)
    first = one.stderr.splitlines()[
        0
    ]  # one job varies nothing: its label is its overrides, not "(no overrides)"
    assert first.startswith("error: job [model=tiny ") and "kv.k_sparsity=1.5]: " in first, first


def proc_alive(pid: int) -> bool:
    from mustafar.procs import pid_alive

    return pid_alive(pid)


@pytest.mark.slow
def test_killed_parallel_sweep_takes_its_workers_with_it(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    args = [*FAST, "benchmark.n=50", f"results_dir={tmp_path}", "sweep=s", "kv.k_sparsity=0,0.5"]
    sweep = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "-m", *args, "hydra/launcher=joblib"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while len(list((tmp_path / "s").glob(f"*/{LOCK_NAME}"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        locks = list((tmp_path / "s").glob(f"*/{LOCK_NAME}"))
        assert len(locks) == 2, "the workers never started their jobs"
        workers = [json.loads(lock.read_text())["pid"] for lock in locks]
        assert sweep.pid not in workers and all(proc_alive(pid) for pid in workers)
    finally:
        sweep.kill()
        sweep.wait()
    time.sleep(5)
    survivors = [pid for pid in workers if proc_alive(pid)]
    for pid in survivors:  # clean up before failing
        os.kill(pid, 9)
    assert not survivors, f"workers {survivors} outlived their killed sweep"
    assert not list((tmp_path / "s").glob("*/result.json"))


def test_a_broken_summary_ends_the_sweep_non_zero(tmp_path, monkeypatch, capsys):
    """Hydra turns a callback's exception into a warning and exits 0; the summary must not hide behind that."""
    from eval import hydra_callbacks

    def broken(sweep_dir):
        raise json.JSONDecodeError("Expecting value", "", 0)

    monkeypatch.setattr(hydra_callbacks, "write_summary", broken)
    (tmp_path / "s").mkdir()
    cfg = OmegaConf.create({"results_dir": str(tmp_path), "sweep": "s", "logger": {"name": "none"}})
    with pytest.raises(SystemExit) as exit_:
        hydra_callbacks.SweepSummary().on_multirun_end(cfg)
    assert exit_.value.code == 1 and "JSONDecodeError" in capsys.readouterr().err


def test_sweep_with_every_job_finished_ends_cleanly(finished, capsys):
    from eval import hydra_callbacks

    callback = hydra_callbacks.SweepSummary()
    callback.planned = [PlannedJob(["kv=dense"], job=finished)]
    cfg = OmegaConf.create(
        {"results_dir": str(finished.results_dir), "sweep": finished.sweep, "logger": {"name": "none"}}
    )
    callback.on_multirun_end(cfg)  # no SystemExit
    assert "Jobs without a result" not in (finished.results_dir / finished.sweep / "summary.md").read_text()
