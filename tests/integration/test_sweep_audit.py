"""Sweep guarantees found broken by an audit: a forced redo that fails is reported (not passed off by the earlier
result), a result.json without rows is not a finished job, and a multirun that sweeps `sweep` prints (and writes) the
table of every folder its jobs wrote to, not of the config's default folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from eval import hydra_callbacks
from eval.job import Job
from eval.results import InvalidResult, read_result
from eval.sweep import PlannedJob, run_job, unfinished
from eval.tables import render, write_summary
from tests.integration.sweep_jobs import config, job


def copy_into(src: Job, dst: Job) -> Job:
    shutil.copytree(src.dir, dst.dir)
    return dst


def summary_config(results_dir: Path, sweep: str = "default"):
    return OmegaConf.create({"results_dir": str(results_dir), "sweep": sweep, "logger": {"name": "none"}})


def test_a_forced_redo_that_fails_is_reported_and_fails_the_sweep(finished, tmp_path, monkeypatch, capsys):
    cfg = config("force=true", results_dir=tmp_path)
    forced = copy_into(finished, Job.from_config(cfg))
    before = forced.result_path.read_bytes()

    def bug(self):
        raise RuntimeError("the redo broke")

    monkeypatch.setattr(Job, "_compute", bug)
    assert run_job(cfg, multirun=True)[0] == 1
    assert forced.result_path.read_bytes() == before  # the earlier result is kept, not destroyed
    (item,) = unfinished([PlannedJob(["force=true"], job=forced)])
    assert item.state == "failed" and "the redo broke" in item.detail and "force=true" in item.detail
    callback = hydra_callbacks.SweepSummary()
    callback.planned = [PlannedJob(["force=true"], job=forced)]
    with pytest.raises(SystemExit) as exit_:
        callback.on_multirun_end(summary_config(tmp_path))
    assert exit_.value.code == 1
    assert "the redo broke" in capsys.readouterr().err
    assert "the redo broke" in (tmp_path / "default" / "summary.md").read_text()


def test_a_finished_result_without_a_failure_is_still_done_under_force(finished, tmp_path):
    forced = copy_into(finished, job("force=true", results_dir=tmp_path))
    assert unfinished([PlannedJob(["force=true"], job=forced)]) == []


@pytest.mark.parametrize("rows", [[], ["junk"], [1, 2]])
def test_a_result_without_rows_is_not_finished(tmp_path, rows):
    path = tmp_path / "j" / "result.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"schema": 2, "job_id": "j", "rows": rows}))
    with pytest.raises(InvalidResult, match="holds no result rows"):
        read_result(path, "j")


def test_a_result_emptied_of_rows_is_redone_with_a_warning(finished, tmp_path, capsys):
    again = copy_into(finished, job(results_dir=tmp_path))
    result = json.loads(again.result_path.read_text())
    result["rows"] = []
    again.result_path.write_text(json.dumps(result))
    assert not again.done
    assert str(again.result_path) in capsys.readouterr().err
    assert again.run() == again.result_path
    assert read_result(again.result_path, again.job_id)["rows"]
    assert "dense" in render(write_summary(again.dir.parent))


def test_sweeping_the_sweep_prints_each_folders_table(finished, tmp_path, capsys):
    """`python run.py -m sweep=s1,s2`: the multirun's config still says sweep=default; its table was printed for
    results/default (another job here) and nothing for s1 and s2, where the jobs wrote."""
    other = job(
        "sweep=default", "kv.k_sparsity=0.5", results_dir=tmp_path
    )  # an earlier job of results/default
    other.dir.mkdir(parents=True)
    result = json.loads(finished.result_path.read_text())
    result["job_id"] = other.job_id
    for row in result["rows"]:
        row["run_id"], row["policy"], row["k_sparsity"] = other.job_id, "K0.5", 0.5
    other.result_path.write_text(json.dumps(result))
    jobs = [copy_into(finished, job(f"sweep={s}", results_dir=tmp_path)) for s in ("s1", "s2")]
    callback = hydra_callbacks.SweepSummary()
    callback.planned = [PlannedJob([f"sweep={s}"], job=j) for s, j in zip(("s1", "s2"), jobs, strict=True)]
    callback.on_multirun_end(summary_config(tmp_path))
    out = capsys.readouterr().out
    for s in ("s1", "s2"):
        assert f"== {s}: {tmp_path / s}/summary.md ==" in out
        assert "dense" in (tmp_path / s / "summary.md").read_text()
    assert "K0.5" not in out  # the default folder's job is no part of this multirun
