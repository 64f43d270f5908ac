"""The paper-layout report compares only like with like: the paper's numbers sit only beside jobs that ran the
paper's setting, a plot line joins only jobs that differ in their sparsity, every Average is over the tasks its
job ran, per-layer lists tell jobs apart, and the compare CLI answers a user's mistake in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eval import stats
from eval.longbench.data import DEFAULT_TASKS
from eval.report import paper
from eval.report.compare import compare, main
from eval.report.layout import accuracy_table, groups
from eval.report.make_tables import make_tables
from eval.report.plots import _lines
from eval.results import load_rows
from eval.tables import render, write_summary
from tests.unit.fake_results import fake_job

LLAMA3 = dict(
    model="llama3",
    model_path="meta-llama/Meta-Llama-3-8B-Instruct",
    benchmark="longbench",
    benchmark_length=None,
)
K05 = dict(k_sparsity=0.5, policy="K0.5 V0.0")  # the paper's "K0.5 V0.0" row


def _paper_sweep(sweep: Path, **pruned) -> None:
    """Llama-3 on LongBench, the paper's 16 tasks: a dense job and a K0.5 job with `pruned`'s fields."""
    tasks = {t: [40.0, 60.0] for t in DEFAULT_TASKS}
    fake_job(sweep, "dense", tasks, **LLAMA3)
    fake_job(sweep, "k5", tasks, **{**LLAMA3, **K05, **pruned})


def _paper_rows(sweep: Path) -> list[str]:
    """The labels of the jobs that have the paper's row under them."""
    (group,) = groups(load_rows(sweep), sweep)
    table = accuracy_table(group, "main_grid")
    if "source" not in table:
        return []
    before = table["policy"].shift()
    return list(before[table["source"] == "paper"])


def test_the_papers_setting_gets_the_papers_rows(tmp_path):
    _paper_sweep(tmp_path)
    assert _paper_rows(tmp_path) == ["dense", "K0.5 V0.0"]
    assert set(paper.setting().tasks) | {"Average"} == set(paper.table_rows("main_grid")[0]["values"])


@pytest.mark.parametrize(
    "fields",
    [
        {"model_path": "meta-llama/Llama-3.1-8B-Instruct"},  # the paper's model name, other weights
        {"model": "my_llama3"},  # the paper's weights under another config (maybe another chat template)
        {"benchmark_config": {"longbench_e": True}},
        {"benchmark_config": {"n": 50}},
    ],
)
def test_other_models_or_data_get_no_paper_rows(tmp_path, fields):
    tasks = {t: [40.0, 60.0] for t in DEFAULT_TASKS}
    fake_job(tmp_path, "dense", tasks, **{**LLAMA3, **fields})
    fake_job(tmp_path, "k5", tasks, **{**LLAMA3, **K05, **fields})
    assert _paper_rows(tmp_path) == []
    (group,) = groups(load_rows(tmp_path), tmp_path)
    assert not group.paper_match


def test_a_subset_of_the_papers_tasks_gets_no_paper_rows(tmp_path):
    tasks = {t: [40.0, 60.0] for t in DEFAULT_TASKS[:-1]}
    fake_job(tmp_path, "dense", tasks, **LLAMA3)
    assert _paper_rows(tmp_path) == []


@pytest.mark.parametrize("pruned", [{"window": 64, "policy": "K0.5 w64"}, {"keep_rule": "word"}])
def test_another_window_or_keep_rule_gets_no_paper_row(tmp_path, pruned):
    _paper_sweep(tmp_path, **pruned)
    assert _paper_rows(tmp_path) == ["dense"]


def test_the_reference_keep_rule_is_the_papers(tmp_path):
    _paper_sweep(tmp_path, keep_rule="reference")
    assert _paper_rows(tmp_path) == ["dense", "K0.5 V0.0"]


def test_plot_lines_join_only_jobs_that_differ_in_sparsity(tmp_path):
    """A window-64 job, another seed's jobs and per-layer lists make lines of their own, each named by what sets it
    apart, and each line's dense point is the dense job asked its prompts."""
    t = lambda v: {"niah_single_1": [v, v], "vt": [v, v]}  # noqa: E731
    fake_job(tmp_path, "dense", t(100.0))
    fake_job(tmp_path, "dense7", t(0.0), seed=7, samples_id="p7")
    fake_job(tmp_path, "k5", t(90.0), k_sparsity=0.5, policy="K0.5")
    fake_job(tmp_path, "k7", t(80.0), k_sparsity=0.7, policy="K0.7")
    fake_job(tmp_path, "k5w64", t(10.0), k_sparsity=0.5, window=64, policy="K0.5 w64")
    fake_job(tmp_path, "k5s7", t(20.0), k_sparsity=0.5, policy="K0.5", seed=7, samples_id="p7")
    fake_job(tmp_path, "pl_a", t(30.0), k_sparsity=0.5, k_layer_sparsity=[0.3, 0.7], policy="K0.5 per-layer")
    fake_job(tmp_path, "pl_b", t(40.0), k_sparsity=0.5, k_layer_sparsity=[0.7, 0.3], policy="K0.5 per-layer")
    (group,) = groups(load_rows(tmp_path), tmp_path)
    lines = {label: list(line["run_id"]) for label, line in _lines(group, "key_pruning").items()}
    k = "K Magnitude (per-token)"
    assert lines == {
        f"{k}, seed=42, window=32": ["dense", "k5", "k7"],
        f"{k}, seed=42, window=64": ["dense", "k5w64"],
        f"{k}, seed=7, window=32": ["dense7", "k5s7"],
        f"{k}, per-layer, seed=42, window=32, k_layer_sparsity=0.3,0.7": ["dense", "pl_a"],
        f"{k}, per-layer, seed=42, window=32, k_layer_sparsity=0.7,0.3": ["dense", "pl_b"],
    }


def test_dense_jobs_alone_are_one_line_per_setting(tmp_path):
    fake_job(tmp_path, "dense", {"vt": [100.0, 0.0]})
    fake_job(tmp_path, "dense7", {"vt": [0.0, 0.0]}, seed=7, samples_id="p7")
    (group,) = groups(load_rows(tmp_path), tmp_path)
    lines = {label: list(line["run_id"]) for label, line in _lines(group, "x").items()}
    assert lines == {"Dense, seed=42": ["dense"], "Dense, seed=7": ["dense7"]}


def _mixed_tasks(sweep: Path) -> None:
    """Two jobs over two tasks, a third over three (other prompts: another samples_id)."""
    two = lambda v: {"niah_single_1": [v, v, 0.0], "vt": [v, v, 100.0]}  # noqa: E731
    fake_job(sweep, "job_dense", two(100.0))
    fake_job(sweep, "job_k5", two(50.0), k_sparsity=0.5, policy="K0.5")
    fake_job(sweep, "job_k7", {**two(20.0), "cwe": [0.0] * 3}, k_sparsity=0.7, policy="K0.7", samples_id="p2")


def test_jobs_over_other_task_lists_get_their_own_table(tmp_path):
    """Every Average, CI and Δ is over the tasks its job ran; the task list names each table and its files."""
    _mixed_tasks(tmp_path / "s")
    report = make_tables(tmp_path, "s")
    two, three = (
        report.tables["s_tiny_ruler-1024-niah_single_1+vt"],
        report.tables["s_tiny_ruler-1024-niah_single_1+vt+cwe"],
    )
    assert list(two["policy"]) == ["dense", "K0.5"] and list(three["policy"]) == ["K0.7"]
    assert list(two["tasks"]) == ["niah_single_1,vt"] * 2 and list(three["tasks"]) == ["niah_single_1,vt,cwe"]
    assert two["Average"].notna().all() and two["Average lo"].notna().all() and three["Average"].notna().all()
    assert two.set_index("policy").loc["K0.5", "Δ vs dense"] == pytest.approx(-100 / 3)
    assert len({p.name for p in report.files}) == len(report.files) == 2 * 5
    assert compare(tmp_path / "s", "K0.5", "dense").diff == pytest.approx(-100 / 3)


def test_a_long_task_list_is_named_by_its_count(tmp_path):
    tasks = {t: [40.0, 60.0] for t in DEFAULT_TASKS}
    fake_job(tmp_path, "all", tasks, **LLAMA3)
    fake_job(tmp_path, "two", {"hotpotqa": [1.0, 2.0], "lcc": [3.0, 4.0]}, **LLAMA3, samples_id="p2")
    benches = sorted(g.bench for g in groups(load_rows(tmp_path), tmp_path))
    assert (
        re.fullmatch(r"longbench-16tasks-[0-9a-f]{6}", benches[0]) and benches[1] == "longbench-hotpotqa+lcc"
    )


def _cli_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_compare_cli_answers_user_errors_in_one_line(tmp_path, capsys):
    sweep = tmp_path / "s"
    assert "no such folder" in _cli_error(capsys, str(sweep), "K0.5", "dense")
    sweep.mkdir()
    assert "run the sweep first" in _cli_error(capsys, str(sweep), "K0.5", "dense")
    _mixed_tasks(sweep)
    fake_job(sweep, "job_dense7", {"niah_single_1": [0.0] * 3, "vt": [0.0] * 3}, seed=7, samples_id="p7")
    err = _cli_error(capsys, str(sweep), "K0.9", "dense")
    assert "no job labelled 'K0.9'" in err and "'K0.5'" in err
    err = _cli_error(capsys, str(sweep), "K0.5", "dense")  # two dense jobs: name one by its run id
    assert "give one's run id" in err and "within one sweep" not in err
    assert "job_dense (tiny ruler-1024-niah_single_1+vt, seed=42)" in err and "job_dense7 (" in err
    err = _cli_error(capsys, str(sweep), "K0.5", "K0.7")
    assert "compare two jobs that ran the same tasks" in err
    fake_job(
        sweep, "lb", {"hotpotqa": [1.0, 2.0]}, benchmark="longbench", benchmark_length=None, policy="K0.3"
    )
    assert "ran different models, benchmarks or task lists" in _cli_error(capsys, str(sweep), "K0.3", "K0.5")
    main([str(sweep), "K0.5", "job_dense"])  # a run id names one of the two jobs labelled dense
    assert capsys.readouterr().out.startswith("K0.5 - job_dense: -33.33 [")


def test_per_layer_lists_tell_jobs_apart(tmp_path):
    fake_job(tmp_path, "dense", {"vt": [100.0, 100.0]})
    fake_job(
        tmp_path, "pl_a", {"vt": [90.0] * 2}, k_sparsity=0.5, k_layer_sparsity=[0.3, 0.7], policy="K0.5 pl"
    )
    fake_job(
        tmp_path, "pl_b", {"vt": [10.0] * 2}, k_sparsity=0.5, k_layer_sparsity=[0.7, 0.3], policy="K0.5 pl"
    )
    table = write_summary(tmp_path)
    assert "job" not in table
    rows = [line for line in render(table).splitlines() if "K0.5 pl" in line]
    assert "| 0.3,0.7 " in rows[0] and "| 0.7,0.3 " in rows[1]
    (group,) = groups(load_rows(tmp_path), tmp_path)
    assert group.shown == ["k_layer_sparsity"]
    assert list(accuracy_table(group, "x")["k_layer_sparsity"]) == ["", "0.3,0.7", "0.7,0.3"]


def test_a_field_missing_from_older_rows_is_its_default(tmp_path):
    """Rows written before `evict` existed stand for evict=none: no column, no job id column."""
    fake_job(tmp_path, "a", {"vt": [100.0, 0.0]}, seed=1, samples_id="p1")
    fake_job(tmp_path, "b", {"vt": [0.0, 0.0]}, seed=2, samples_id="p2")
    path = tmp_path / "b" / "result.json"
    older = json.loads(path.read_text())
    for row in older["rows"]:
        del row["evict"]
    path.write_text(json.dumps(older))
    table = write_summary(tmp_path)
    assert "evict" not in table and "job" not in table and sorted(table["seed"].unique()) == [1, 2]


def test_speed_only_keys_are_eval_jobs():
    from eval.job import NOT_IDENTITY
    from eval.tables import SPEED_ONLY

    assert SPEED_ONLY == tuple(f"benchmark.{k}" for k in NOT_IDENTITY)


def test_a_longbench_table_of_chinese_tasks_only_shows_avg_zh_not_an_english_average(tmp_path):
    """No English task ran, so there is no Average (it read 0.00 [0.00, 0.00], Δ vs dense 0.00 within noise, and
    the plots drew the zeros): the table and plots show avg_zh, the mean of the Chinese categories' means, as
    summary.md does: dense (50 + 25) / 2 = 37.5, K0.5 (40 + 20) / 2 = 30; no Δ, as in summary.md."""
    longbench = dict(benchmark="longbench", benchmark_length=None)
    fake_job(
        tmp_path / "zh", "dense", {"multifieldqa_zh": [40.0, 60.0], "dureader": [20.0, 30.0]}, **longbench
    )
    fake_job(tmp_path / "zh", "k5", {"multifieldqa_zh": [30.0, 50.0], "dureader": [10.0, 30.0]}, **longbench,
             k_sparsity=0.5, policy="K0.5")  # fmt: skip
    table = make_tables(tmp_path, "zh").tables["zh_tiny_longbench"].set_index("policy")
    assert "Average" not in table and list(table["avg_zh"]) == [37.5, 30.0]
    ci = stats.bootstrap_ci({"multifieldqa_zh": [30.0, 50.0], "dureader": [10.0, 30.0]},
                            {"multifieldqa_zh": 0.5, "dureader": 0.5})  # fmt: skip
    assert (table.loc["K0.5", "avg_zh lo"], table.loc["K0.5", "avg_zh hi"]) == ci
    assert table["Δ vs dense"].isna().all()
    (group,) = groups(load_rows(tmp_path / "zh"), tmp_path / "zh")
    assert [list(line[group.headline]) for line in _lines(group, "zh").values()] == [[37.5, 30.0]]
    with pytest.raises(ValueError, match="no Average to compare"):
        compare(tmp_path / "zh", "K0.5", "dense")


def test_jobs_differing_only_in_a_model_knob_get_its_column_and_their_own_plot_lines(tmp_path):
    """As in summary.md, `model.chat_template` tells apart jobs the label does not: a column in the report, and one
    plot line per template, each with its dense point (they were joined into one line of four points)."""
    for chat, pruned in ((True, [100.0, 0.0, 0.0]), (False, [0.0, 0.0, 0.0])):
        config = {"name": "tiny", "chat_template": chat}
        fake_job(
            tmp_path, f"dense_{chat}", {"vt": [100.0, 0.0, 100.0]}, samples_id=f"p{chat}", model_config=config
        )
        fake_job(tmp_path, f"k5_{chat}", {"vt": pruned}, samples_id=f"p{chat}", model_config=config,
                 k_sparsity=0.5, policy="K0.5")  # fmt: skip
    (group,) = groups(load_rows(tmp_path), tmp_path)
    table = accuracy_table(group, "x")
    assert group.shown == ["model.chat_template"]
    assert sorted(zip(table["policy"], table["model.chat_template"], table["Average"])) == [
        ("K0.5", "False", 0.0), ("K0.5", "True", 33.33), ("dense", "False", 66.67), ("dense", "True", 66.67)
    ]  # fmt: skip
    lines = {label: list(zip(line["run_id"], line["Average"])) for label, line in _lines(group, "x").items()}
    k = "K Magnitude (per-token)"
    assert lines == {
        f"{k}, model.chat_template=False": [("dense_False", 66.67), ("k5_False", 0.0)],
        f"{k}, model.chat_template=True": [("dense_True", 66.67), ("k5_True", 33.33)],
    }


def test_jobs_of_other_devices_and_dtypes_show_them_in_the_report(tmp_path):
    """A CPU fp32 dense job beside a CUDA bf16 pruned one: not the same setting, so each row says its device and
    dtype (they sat side by side unmarked, the labels differing)."""
    fake_job(tmp_path, "dense", {"vt": [100.0, 0.0]}, samples_id="cpu", device="cpu", dtype="float32")
    fake_job(tmp_path, "k5", {"vt": [0.0, 0.0]}, samples_id="cuda", device="cuda", dtype="bfloat16",
             k_sparsity=0.5, policy="K0.5")  # fmt: skip
    (group,) = groups(load_rows(tmp_path), tmp_path)
    table = accuracy_table(group, "x")
    assert group.shown == ["dtype", "device"]
    assert [list(table[c]) for c in ("policy", "dtype", "device")] == [
        ["dense", "K0.5"], ["float32", "bfloat16"], ["cpu", "cuda"]
    ]  # fmt: skip
