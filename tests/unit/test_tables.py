"""The sweep table never collapses distinct jobs (fault injection with fake result.json files), keeps benchmarks
apart, and shows n, CIs and the paired Δ vs dense."""

from __future__ import annotations

import pandas as pd
import pytest

from eval import stats
from eval.tables import render, write_summary
from tests.unit.fake_results import fake_job


def test_jobs_differing_only_in_benchmark_seed_stay_three_rows(tmp_path):
    for seed, vt in [(1, [100, 0, 0, 0]), (2, [100, 100, 0, 0]), (3, [100, 100, 100, 0])]:
        fake_job(tmp_path, f"job{seed}", {"vt": vt}, benchmark_config={"seed": seed}, samples_id=f"p{seed}")
    table = write_summary(tmp_path)
    vt = table[table["column"] == "vt"]
    assert len(vt) == 3 and sorted(vt["value"]) == [25.0, 50.0, 75.0]
    assert sorted(vt["benchmark.seed"]) == [1, 2, 3]
    md = (tmp_path / "summary.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| dense")]
    assert len(lines) == 3 and "benchmark.seed" in md
    assert len(pd.read_csv(tmp_path / "summary.csv").query("column == 'vt'")) == 3


def test_identical_labels_with_no_shown_difference_get_their_job_id(tmp_path):
    fake_job(tmp_path, "a", {"vt": [100, 0]})
    fake_job(tmp_path, "b", {"vt": [0, 0]}, versions={"torch": "x"})  # differs only outside the shown fields
    table = write_summary(tmp_path)
    assert sorted(table.loc[table["column"] == "vt", "job"]) == ["a", "b"]
    assert "| a " in render(table) or " a |" in render(table)


def test_tiny_models_of_two_families_show_their_family(tmp_path):
    fake_job(tmp_path, "llama", {"vt": [100, 0]}, model_arch="llama", samples_id="p1")
    fake_job(tmp_path, "mistral", {"vt": [0, 0]}, model_arch="mistral", samples_id="p2")
    table = write_summary(tmp_path)
    assert sorted(table.loc[table["column"] == "vt", "model_arch"]) == ["llama", "mistral"]
    assert "job" not in table and "| mistral " in render(table)


def test_jobs_differing_only_in_a_model_knob_show_that_knob(tmp_path):
    """`model.chat_template` and a random model's sizes are in no column of their own: the table shows the model
    config's differing key (it showed only the job ids before)."""
    config = {
        "name": "tiny",
        "path": None,
        "dtype": "float32",
        "chat_template": True,
        "architecture": {},
        "seed": 0,
    }
    fake_job(tmp_path, "chat", {"vt": [100, 0]}, model_config=config, samples_id="p1")
    fake_job(
        tmp_path, "plain", {"vt": [0, 0]}, model_config={**config, "chat_template": False}, samples_id="p2"
    )
    fake_job(tmp_path, "wide", {"vt": [0, 0]}, samples_id="p3",
             model_config={**config, "architecture": {"intermediate_size": 128}})  # fmt: skip
    table = write_summary(tmp_path)
    vt = table[table["column"] == "vt"].set_index("model.chat_template")
    assert "job" not in table and sorted(map(str, vt.index)) == ["False", "True", "True"]
    sizes = table.loc[table["column"] == "vt", "model.architecture.intermediate_size"]
    assert sorted(sizes.map(lambda v: "" if pd.isna(v) or v == "" else str(int(v)))) == ["", "", "128"]
    assert "model.chat_template" in render(table)


def test_rows_without_a_model_config_add_no_model_columns(tmp_path):
    """Rows written before rows recorded the model config differ from newer ones in no model knob: a sweep resumed
    across that change shows only what really differs (here the benchmark seed)."""
    config = {"name": "tiny", "chat_template": True, "seed": 0, "gguf_file": "x.gguf", "max_length": None}
    fake_job(tmp_path, "old", {"vt": [100, 0]}, benchmark_config={"seed": 1}, samples_id="p1")
    fake_job(
        tmp_path, "new", {"vt": [0, 0]}, benchmark_config={"seed": 2}, samples_id="p2", model_config=config
    )
    table = write_summary(tmp_path)
    assert not [c for c in table.columns if c.startswith("model.")] and "benchmark.seed" in table


def test_jobs_of_several_code_versions_are_named_under_the_table(tmp_path, capsys):
    fake_job(tmp_path, "old", {"vt": [100, 0]}, git_sha="0000000+dirty", samples_id="p1")
    fake_job(tmp_path, "new", {"vt": [0, 0]}, git_sha="1234567", samples_id="p2")
    write_summary(tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "2 code versions" in md and "0000000+dirty (1 jobs)" in md and "1234567 (1 jobs)" in md
    assert "2 code versions" in capsys.readouterr().err
    fake_job(tmp_path / "one", "a", {"vt": [0, 0]}, git_sha="1234567")
    write_summary(tmp_path / "one")
    assert "code versions" not in (tmp_path / "one" / "summary.md").read_text()


def test_benchmarks_and_lengths_get_separate_tables(tmp_path):
    fake_job(tmp_path, "r1", {"vt": [100, 0]})
    fake_job(tmp_path, "r2", {"vt": [100, 0]}, benchmark_length=2048, benchmark_config={"length": 2048})
    fake_job(
        tmp_path, "lb", {"hotpotqa": [50.0, 25.0], "lcc": [80.0, 60.0]}, benchmark="longbench",
        benchmark_length=None,
    )  # fmt: skip
    text = render(write_summary(tmp_path))
    titles = [line for line in text.splitlines() if line.startswith("tiny ")]
    assert titles == ["tiny longbench", "tiny ruler-1024", "tiny ruler-2048"]
    longbench = text.split("tiny longbench")[1].split("\n\n")[0]
    assert "vt" not in longbench and "hotpotqa" in longbench and "avg_categories" in longbench


def test_cells_show_ci_n_and_paired_delta_vs_dense(tmp_path):
    dense = [100.0] * 20
    fake_job(tmp_path, "dense", {"vt": dense, "cwe": dense})
    pruned = {"vt": [100.0] * 10 + [0.0] * 10, "cwe": [100.0] * 19 + [0.0]}
    fake_job(tmp_path, "k7", pruned, k_sparsity=0.7, policy="K0.7", k_sparsity_measured=0.7)
    table = write_summary(tmp_path)
    avg = table[(table["column"] == "avg") & (table["run_id"] == "k7")].iloc[0]
    expected = stats.paired_test(pruned, {"vt": dense, "cwe": dense}, {"vt": 0.5, "cwe": 0.5})
    assert avg["delta"] == pytest.approx(-27.5) == pytest.approx(expected.diff)
    assert (avg["delta_low"], avg["delta_high"]) == (expected.low, expected.high)
    assert avg["dense_run_id"] == "dense" and not avg["within_noise"]
    vt = table[(table["column"] == "vt") & (table["run_id"] == "k7")].iloc[0]
    assert (vt["ci_low"], vt["ci_high"]) == stats.bootstrap_ci({"vt": pruned["vt"]}) and vt["n"] == 20
    row = next(line for line in render(table, current="k7").splitlines() if "K0.7" in line)
    assert f"50.00 [{vt['ci_low']:.2f}, {vt['ci_high']:.2f}]" in row
    assert row.startswith("| *") and "| 20 " in row and f"{expected.diff:+.2f}" in row


def test_delta_within_noise_is_marked_and_other_prompts_are_not_paired(tmp_path):
    fake_job(tmp_path, "dense", {"vt": [100.0, 0.0, 100.0, 0.0]})
    fake_job(tmp_path, "k5", {"vt": [100.0, 0.0, 0.0, 100.0]}, k_sparsity=0.5, policy="K0.5")
    fake_job(tmp_path, "k5b", {"vt": [0.0] * 4}, k_sparsity=0.5, policy="K0.5", samples_id="other", seed=7)
    table = write_summary(tmp_path)
    avg = table[table["column"] == "avg"].set_index("run_id")
    assert avg.loc["k5", "within_noise"] and pd.isna(avg.loc["k5b", "delta"])
    row = next(line for line in render(table).splitlines() if "K0.5" in line and "| 42 " in line)
    assert "+0.00" in row and "≈" in row


def test_an_eviction_only_job_is_not_the_dense_reference(tmp_path):
    """A SnapKV job prunes nothing (k = v = 0) but drops tokens: it gets its own Δ against the real dense job, and
    with no dense job in the sweep nobody is paired against it."""
    fake_job(
        tmp_path, "snap", {"vt": [100.0, 0.0, 0.0, 0.0]}, evict="snapkv", token_budget=840, policy="snapkv840"
    )
    fake_job(tmp_path, "k5", {"vt": [100.0, 100.0, 0.0, 0.0]}, k_sparsity=0.5, policy="K0.5")
    alone = write_summary(tmp_path)
    assert "delta" not in alone  # no job was paired
    fake_job(tmp_path, "dense", {"vt": [100.0, 100.0, 100.0, 0.0]})
    avg = write_summary(tmp_path).query("column == 'avg'").set_index("run_id")
    assert avg.loc["snap", "dense_run_id"] == "dense" and avg.loc["snap", "delta"] == pytest.approx(-50.0)
    assert avg.loc["k5", "dense_run_id"] == "dense" and avg.loc["k5", "delta"] == pytest.approx(-25.0)


def test_jobs_over_other_task_lists_show_them_and_tasks_precede_averages(tmp_path):
    """An average over other tasks is another number: the task list becomes a column wherever it differs in a
    table, and every task column comes before the averages whichever job ran which tasks."""
    fake_job(tmp_path, "dense", {"vt": [100.0, 100.0]})
    fake_job(tmp_path, "k5", {"vt": [100.0, 100.0], "cwe": [0.0, 0.0]}, k_sparsity=0.5, policy="K0.5")
    header = next(
        line for line in render(write_summary(tmp_path)).splitlines() if line.startswith("| policy")
    )
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "benchmark.tasks" in columns
    assert columns.index("vt") < columns.index("cwe") < columns.index("avg")


def test_jobs_of_other_devices_and_dtypes_show_them_whatever_their_labels(tmp_path):
    """A setting outside the policy is shown wherever two jobs of a table differ in it, not only between jobs of
    one label: a CPU fp32 dense job beside a CUDA bf16 K0.5 job sat unmarked. A policy field the label names
    (window 64 is "K0.7 w64") gets no column of its own."""
    fake_job(tmp_path, "dense", {"vt": [100.0, 0.0]}, samples_id="cpu", device="cpu", dtype="float32")
    fake_job(tmp_path, "k5", {"vt": [0.0, 0.0]}, samples_id="cuda", device="cuda", dtype="bfloat16",
             k_sparsity=0.5, policy="K0.5")  # fmt: skip
    fake_job(tmp_path, "k7", {"vt": [0.0, 0.0]}, samples_id="cuda", device="cuda", dtype="bfloat16",
             k_sparsity=0.7, window=64, policy="K0.7 w64")  # fmt: skip
    header = next(
        line for line in render(write_summary(tmp_path)).splitlines() if line.startswith("| policy")
    )
    assert [c.strip() for c in header.strip("|").split("|")][:4] == ["policy", "dtype", "device", "vt"]
    row = next(
        line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| dense")
    )
    assert [c.strip() for c in row.strip("|").split("|")][:3] == ["dense", "float32", "cpu"]
