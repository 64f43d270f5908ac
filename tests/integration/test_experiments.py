"""Paper experiments end to end on the tiny model: configs, dense de-duplication, the paper-layout table against
a hand computation from the result rows, parallel (joblib) sweeps merging, launcher configs, job reuse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from eval.report.make_tables import make_tables
from eval.report.reuse import planned_job_ids, reuse

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
TINY = ["model=tiny", "benchmark.tasks=[vt]", "benchmark.n=1", "logger=none"]
PAPER_EXPERIMENTS = ["key_pruning", "value_pruning", "main_grid", "compression_accuracy"]


def run_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def result_rows(sweep_dir: Path) -> pd.DataFrame:
    rows = [r for p in sorted(sweep_dir.glob("*/result.json")) for r in json.loads(p.read_text())["rows"]]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def key_pruning(tmp_path_factory) -> Path:
    """`python run.py -m +experiment=key_pruning` on the tiny model: 9 sweep points, 7 distinct jobs."""
    results = tmp_path_factory.mktemp("results")
    proc = run_py("-m", "+experiment=key_pruning", *TINY, f"results_dir={results}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("[mustafar] skip") == 2  # the 3 dense points are one job
    return results


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_experiment_configs_are_global_sweeps(experiment):
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert (ROOT / "experiments" / experiment / "README.md").exists()
    ids = planned_job_ids(experiment, ["model=tiny"])
    assert len(ids) == len(set(ids)) and sum("_dense_" in i for i in ids) == 1


def test_planned_jobs_dedupe_dense_and_follow_command_line_sweeps():
    assert len(planned_job_ids("key_pruning", ["model=tiny"])) == 7  # 3 x 3 points, 3 dense -> 1
    assert len(planned_job_ids("value_pruning", ["model=tiny"])) == 9  # 4 x 3 points, 4 dense -> 1
    only = planned_job_ids("key_pruning", ["model=tiny", "kv.k_sparsity=0.5,0.7", "kv.k_scorer=think"])
    assert [i.split("_")[2] for i in only] == ["ThinK-K0.5", "ThinK-K0.7"]


@pytest.mark.slow
def test_key_pruning_table_matches_hand_computation(key_pruning):
    sweep_dir = key_pruning / "key_pruning"
    assert len(list(sweep_dir.glob("*/result.json"))) == 7
    rows = result_rows(sweep_dir)
    tasks = rows[rows["kind"] == "task"]
    hand = tasks.groupby("policy")["value"].mean()  # Average = mean of the task scores, per job

    report = make_tables(key_pruning, "key_pruning")
    (table,) = report.tables.values()
    assert list(table["policy"]) == [
        "dense",
        "ThinK-K0.5",
        "K0.5[oa]",
        "K0.5",
        "ThinK-K0.7",
        "K0.7[oa]",
        "K0.7",
    ]
    score_cols = list(table.columns[table.columns.get_loc("V") + 1 : table.columns.get_loc("Average") + 1])
    assert score_cols == ["vt", "vt lo", "vt hi", "Average"]  # each score with its 95% CI
    for _, row in table.iterrows():
        assert row["Average"] == pytest.approx(hand[row["policy"]])
        assert row["vt"] == pytest.approx(tasks.set_index("policy").loc[row["policy"], "value"])
    assert "source" not in table  # tiny model on RULER: no paper numbers
    names = {p.name for p in report.files}
    assert {
        "key_pruning_tiny_ruler-1024.md",
        "key_pruning_tiny_ruler-1024.tex",
        "key_pruning_tiny_ruler-1024.csv",
    } <= names
    assert {n for n in names if n.endswith(".png")} == {
        "key_pruning_tiny_ruler-1024_accuracy_vs_sparsity.png",
        "key_pruning_tiny_ruler-1024_accuracy_vs_kv_size.png",
    }
    # the multirun-end callback already wrote the same report into the sweep folder
    assert (sweep_dir / "report" / "key_pruning_tiny_ruler-1024.md").exists()


@pytest.mark.slow
def test_reuse_copies_identical_jobs_into_another_sweep(key_pruning):
    ids = planned_job_ids("main_grid", TINY)
    copied = reuse(key_pruning, "main_grid", ids, ["key_pruning"])
    # dense, K0.5, K0.7, ThinK 0.5 / 0.7 were run by key_pruning; V-only and K+V were not
    assert sorted(i.split("_")[2] for i in copied) == ["K0.5", "K0.7", "ThinK-K0.5", "ThinK-K0.7", "dense"]
    assert reuse(key_pruning, "main_grid", ids, ["key_pruning"]) == []  # done jobs are never replaced


@pytest.mark.parametrize(
    ("launcher", "overrides", "target"),
    [
        ("joblib", ["hydra.launcher.n_jobs=4"], "JoblibLauncher"),
        (
            "submitit_slurm",
            ["hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"],
            "SlurmLauncher",
        ),
    ],
)
def test_launcher_configs_compose(launcher, overrides, target):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["+experiment=main_grid", f"hydra/launcher={launcher}", *overrides],
            return_hydra_config=True,
        )
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_.endswith(target)
    get_class(launcher_cfg._target_)
    for override in overrides:
        key, value = override.removeprefix("hydra.launcher.").split("=")
        assert str(launcher_cfg[key]) == value


@pytest.mark.slow
def test_joblib_multirun_writes_both_jobs_and_merges(tmp_path):
    proc = run_py(
        "-m",
        *TINY,
        "kv.k_sparsity=0,0.5",
        "sweep=par",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"results_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = tmp_path / "par"
    assert len(list(sweep_dir.glob("*/result.json"))) == 2
    rows = result_rows(sweep_dir)
    merged = pd.read_csv(sweep_dir / "summary.csv").query("column == 'vt'")
    assert sorted(merged["policy"]) == ["K0.5", "dense"]
    for _, row in merged.iterrows():
        mine = rows[(rows["run_id"] == row["run_id"]) & (rows["task"] == "vt")]["value"]
        assert row["value"] == pytest.approx(mine.item(), abs=0.01)
