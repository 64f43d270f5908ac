"""eval.report without a model: the transcribed paper numbers, the LongBench layout and the paper side by
side, KV-size closed forms, the decode-speed table, and a W&B summary run written offline."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from eval import stats
from eval.report import paper
from eval.report.decode import table14
from eval.report.kv_size import COMPUTED, MEASURED, kv_fraction, side_fraction
from eval.report.make_tables import make_tables
from eval.report.policies import policy_key
from eval.results import SCHEMA_VERSION, load_rows
from eval.tables import summary_frame
from tests.unit.fake_results import fake_job
from tests.unit.script_module import load_script

ROOT = Path(__file__).resolve().parents[2]
GRID = {r["name"]: r for r in paper.table_rows("main_grid")}
POLICY = dict(k_sparsity=0.0, v_sparsity=0.0, k_direction="token", v_direction="token")


def test_paper_numbers_spot_checks():
    assert GRID["Dense"]["values"]["narrativeqa"] == 23.39
    assert GRID["ThinK0.7"]["values"]["trec"] == 34.00
    assert GRID["K0.7 V0.7"]["values"]["repobench-p"] == 52.86
    assert GRID["K0.5 V0.5"]["values"]["qasper"] == 46.63
    key = {(r["name"], r["policy"]["k_sparsity"]): r["values"] for r in paper.table_rows("key_pruning")}
    assert key[("Unstructured output-aware", 0.7)]["Average"] == 42.13
    assert key[("ThinK (structured)", 0.5)]["Code"] == 29.56
    value = {(r["name"], r["policy"]["v_sparsity"]): r["values"] for r in paper.table_rows("value_pruning")}
    assert value[("Output-aware (per-channel)", 0.7)]["Average"] == 42.67
    assert value[("Magnitude (per-channel)", 0.7)]["Synthetic"] == 38.75
    speed = {(r["model"], r["format"]): r for r in paper.numbers()["decode_speed"]["rows"]}
    assert speed[("Llama3", "Mustafar K0.7 V0.7")]["tokens_per_s"]["2048"] == 89.699
    assert speed[("Llama2", "Dense")]["ttft_s"] == 1.396


@pytest.mark.parametrize("name", list(GRID))
def test_paper_grid_average_is_the_mean_of_its_16_tasks(name):
    values = GRID[name]["values"]
    tasks = [v for k, v in values.items() if k != "Average"]
    assert len(tasks) == 16
    if name == "K0.5 V0.5":  # printed Qasper 46.63 is likely 43.63: only that matches the printed Average
        assert sum(tasks) / 16 == pytest.approx(42.84, abs=0.005) and values["Average"] == 42.65
        assert (sum(tasks) - 46.63 + 43.63) / 16 == pytest.approx(values["Average"], abs=0.005)
        assert any("Qasper 43.63" in note for note in paper.numbers()["known_inconsistencies"])
        return
    assert sum(tasks) / 16 == pytest.approx(values["Average"], abs=0.006)


def _longbench_job(sweep_dir: Path, name: str, policy: dict, values: dict[str, float]) -> None:
    base = {
        "run_id": name, "sweep": sweep_dir.name, "model": "llama3", "model_path": "meta-llama/Meta-Llama-3-8B-Instruct",
        "benchmark": "longbench", "benchmark_length": None, "head_dim": 128, "mode": "mask", "window": 32,
        "keep_rule": "exact", **POLICY, "k_scorer": "magnitude", "v_scorer": "magnitude", **policy,
        "k_sparsity_measured": policy.get("k_sparsity", 0.0), "v_sparsity_measured": policy.get("v_sparsity", 0.0),
        "kv_bytes": None, "dense_kv_bytes": 1000, "policy": name,
    }  # fmt: skip
    rows = [
        {**base, "kind": "task", "task": t, "metric": "m", "value": v, "n": 200} for t, v in values.items()
    ]
    path = sweep_dir / name / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema": SCHEMA_VERSION, "job_id": name, "rows": rows}))


@pytest.fixture
def llama3_key_sweep(tmp_path) -> Path:
    """A key_pruning sweep whose Llama-3 task scores are the paper's per-task numbers."""
    sweep = tmp_path / "key_pruning"
    for name, policy in {
        "Dense": {},
        "ThinK0.5": {"k_sparsity": 0.5, "k_scorer": "think"},
        "K0.5 V0.0": {"k_sparsity": 0.5},
        "ThinK0.7": {"k_sparsity": 0.7, "k_scorer": "think"},
        "K0.7 V0.0": {"k_sparsity": 0.7},
    }.items():
        tasks = {k: v for k, v in GRID[name]["values"].items() if k != "Average"}
        _longbench_job(sweep, name, policy, tasks)
    return tmp_path


def test_longbench_categories_and_paper_side_by_side(llama3_key_sweep):
    report = make_tables(llama3_key_sweep, "key_pruning", per_task=True)
    table = report.tables["key_pruning_llama3_longbench"]
    categories = ["Single-Doc QA", "Multi-Doc QA", "Summarization", "Few-shot", "Synthetic", "Code"]
    assert list(table.columns[table.columns.get_loc("V") + 1 :][:7]) == [*categories, "Average"]
    assert list(table["source"]) == ["ours", "paper"] * 5
    ours, published = table[table["source"] == "ours"], table[table["source"] == "paper"]
    # the paper's per-task numbers, laid out by category, give the paper's Key pruning table
    for column in [*categories, "Average"]:
        assert ours[column].to_numpy() == pytest.approx(published[column].to_numpy(), abs=0.006)
    assert list(published["method"]) == [
        "Dense", "ThinK (structured)", "Unstructured magnitude", "ThinK (structured)", "Unstructured magnitude"
    ]  # fmt: skip
    per_task = report.tables["key_pruning_llama3_longbench_per_task"]
    assert per_task.loc[0, "narrativeqa"] == 23.39 and per_task.loc[1, "narrativeqa"] == 23.39


def test_variants_of_a_paper_policy_get_neither_its_paper_row_nor_its_family(llama3_key_sweep):
    """SnapKV alone is not Dense, and fp8 values or N:M groups are not the paper's plain per-token magnitude
    pruning: no paper row under them, no shared plot line, and Δ vs dense against the real dense job."""
    sweep = llama3_key_sweep / "key_pruning"
    tasks = {k: v for k, v in GRID["K0.5 V0.0"]["values"].items() if k != "Average"}
    _longbench_job(sweep, "snapkv840", {"evict": "snapkv", "token_budget": 840}, tasks)
    _longbench_job(sweep, "K0.5 fp8", {"k_sparsity": 0.5, "value_dtype": "fp8"}, tasks)
    _longbench_job(sweep, "K0.5 nm4", {"k_sparsity": 0.5, "keep_rule": "nm4"}, tasks)
    _longbench_job(sweep, "K0.5 ref", {"k_sparsity": 0.5, "keep_rule": "reference"}, tasks)
    table = make_tables(llama3_key_sweep, "key_pruning").tables["key_pruning_llama3_longbench"]
    ours = table[table["source"] == "ours"].set_index("policy")
    assert ours.loc["snapkv840", "method"] == "snapkv840"
    assert ours.loc["K0.5 fp8", "method"] == "K Magnitude (per-token), fp8"
    assert ours.loc["K0.5 nm4", "method"] == "K Magnitude (per-token), nm4"
    assert (
        ours.loc["K0.5 ref", "method"] == "K Magnitude (per-token)"
    )  # the published code's counts: same rule
    source, policy = list(table["source"]), list(table["policy"])
    assert [p for p, s, nxt in zip(policy, source, [*source[1:], None]) if s == "ours" and nxt == "paper"] == [
        "Dense", "ThinK0.5", "K0.5 V0.0", "K0.5 ref", "ThinK0.7", "K0.7 V0.0"
    ]  # fmt: skip


def test_kv_size_closed_forms_and_measured_bytes():
    assert side_fraction(0.5, 0.5, "token", "magnitude", 128) == 0.5625  # docs/formats.md §2
    assert side_fraction(0.7, 0.7, "token", "magnitude", 128) == 0.375  # keep 38 in a 40-value slot
    assert side_fraction(0.7, 0.7, "channel", "think", 128) == pytest.approx(0.3)
    assert side_fraction(0.0, 0.0, "token", "magnitude", 128) == 1.0
    # fp8 values: bitmap 16 + 40 code bytes + a 4-byte scale = 60 of 256 (docs/formats.md §2); a dense side stored too
    assert side_fraction(0.7, 0.7, "token", "magnitude", 128, "fp8") == 60 / 256
    assert side_fraction(0.0, 0.0, "token", "magnitude", 64, "fp8") == (8 + 64 + 4) / 128
    row = {**POLICY, "k_scorer": "magnitude", "v_scorer": "magnitude", "head_dim": 128, "mode": "mask"}
    row |= {"k_sparsity": 0.7, "k_sparsity_measured": 0.7, "v_sparsity_measured": 0.0}
    assert kv_fraction(row) == (pytest.approx((0.375 + 1) / 2), COMPUTED)
    assert kv_fraction({**row, "mode": "compressed", "kv_bytes": 600, "dense_kv_bytes": 1000}) == (
        0.6,
        MEASURED,
    )
    # eviction: a quarter of the dense reference was evicted, so every figure covers 3/4 of the tokens
    evicted = {**row, "dense_kv_bytes": 750, "kv_evicted_bytes": 250}
    assert kv_fraction(evicted) == (pytest.approx(0.75 * (0.375 + 1) / 2), COMPUTED)
    assert kv_fraction({**evicted, "mode": "compressed", "kv_bytes": 300}) == (0.3, MEASURED)
    assert policy_key({**row, "k_sparsity": 0.0, "k_scorer": "think"}) == policy_key(
        {**row, "k_sparsity": 0.0}
    )


def test_decode_table_joins_measurements_with_the_paper(tmp_path):
    assert len(table14(tmp_path)) == 6  # no measurement: the paper's six rows
    points = [
        {"fmt": f, "batch": 1, "tokens_per_s": tps, "kv_fraction_of_dense": kv, "oom": False}
        for f, tps, kv in [("dense", 50.0, 1.0), ("K0.7V0.7", 40.0, 0.4)]
    ]
    report = {
        "model": "llama3_8b",
        "device": "H100",
        "context": 16384,
        "points": points,
        "ttft_s": {"dense": 1.5},
    }
    (tmp_path / "bench_decode.json").write_text(json.dumps(report))
    table = table14(tmp_path).set_index(["model", "format"])
    assert table.loc[("Llama3", "Mustafar K0.7 V0.7"), "ours ×dense B1"] == pytest.approx(0.8)
    assert table.loc[("Llama3", "Dense"), "ours TTFT s"] == 1.5
    assert table.loc[("Llama3", "Mustafar K0.7 V0.7"), "paper ×dense @1024"] == pytest.approx(88.293 / 61.220)
    assert pd.isna(table.loc[("Llama2", "Dense"), "ours TTFT s"])


def test_decode_speed_report_reads_the_current_kernel_benchmark(tmp_path):
    """The kernel-only table comes from the current kernel round's bench (not round 5's results/kernels/bench.json,
    which it showed until round 30), one row per keep rule, with that file's numbers."""
    from eval.report.decode import CURRENT_KERNEL_BENCH

    committed = ROOT / "results" / CURRENT_KERNEL_BENCH
    bench = json.loads(committed.read_text())
    (tmp_path / CURRENT_KERNEL_BENCH).parent.mkdir(parents=True)
    (tmp_path / CURRENT_KERNEL_BENCH).write_text(committed.read_text())
    (tmp_path / "kernels" / "bench.json").write_text((ROOT / "results/kernels/bench.json").read_text())
    report = make_tables(tmp_path, "decode_speed", out_dir=tmp_path / "out")
    assert {p.name for p in report.files} >= {"decode_speed.md", "decode_kernels.md"}
    assert "No end-to-end measurement yet" in (tmp_path / "out" / "decode_speed.md").read_text()
    table = report.tables["decode_kernels"]
    assert set(table["keep rule"]) == {p["keep_rule"] for p in bench["decode"]} and "exact" not in set(
        table["keep rule"]
    )
    want = next(
        p
        for p in bench["decode"]
        if (p["keep_rule"], p["sparsity"], p["batch"], p["tokens"]) == ("word", 0.7, 8, 16384)
    )
    row = table[
        (table["keep rule"] == "word")
        & (table["s"] == 0.7)
        & (table["batch"] == 8)
        & (table["tokens"] == 16384)
    ]
    assert row["×dense (CUDA graph)"].item() == pytest.approx(
        want["dense_graph_us"] / want["sparse_graph_us"], rel=1e-9
    )
    assert str(CURRENT_KERNEL_BENCH) in (tmp_path / "out" / "decode_kernels.md").read_text()


def test_decode_speed_report_without_a_kernel_benchmark_says_so(tmp_path, capsys):
    report = make_tables(tmp_path, "decode_speed", out_dir=tmp_path / "out")
    assert "decode_kernels" not in report.tables
    assert "no kernel benchmark at" in capsys.readouterr().out


def test_wandb_summary_run_is_written_offline(llama3_key_sweep, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = {"name": "wandb", "mode": "offline", "project": "mustafar-test"}
    report = make_tables(llama3_key_sweep, "key_pruning", logger=logger, noise=False)
    run_dir = Path(report.wandb_dir)
    assert run_dir.parent == llama3_key_sweep / "wandb" and run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("*.wandb"))
    images = list(run_dir.glob("files/media/images/*.png"))
    assert len(images) == 2
    tables = {p.name.split("_")[0]: p.read_text() for p in run_dir.glob("files/media/table/*.table.json")}
    assert len(tables) == 2 and "Single-Doc QA" in "".join(tables.values())
    # by hand, as at the end of a sweep, the run holds summary.md's table: one line per job and score
    want = summary_frame(load_rows(llama3_key_sweep / "key_pruning"))
    summary = json.loads(tables["summary"])
    assert summary["columns"] == list(want.columns) and len(summary["data"]) == len(want)


def test_longbench_average_is_english_only_with_cis_and_paired_delta(tmp_path):
    dense = {"hotpotqa": [100.0, 0.0, 100.0, 100.0], "lcc": [80.0, 60.0, 70.0, 90.0], "dureader": [0.0] * 4}
    pruned = {"hotpotqa": [100.0, 0.0, 0.0, 100.0], "lcc": [80.0, 60.0, 70.0, 50.0], "dureader": [100.0] * 4}
    sweep = tmp_path / "lb"
    fake_job(sweep, "dense", dense, benchmark="longbench", benchmark_length=None)
    fake_job(sweep, "k5", pruned, benchmark="longbench", benchmark_length=None, k_sparsity=0.5, policy="K0.5")
    report = make_tables(tmp_path, "lb")
    table = report.tables["lb_tiny_longbench"].set_index("policy")
    english = {t: v for t, v in pruned.items() if t != "dureader"}  # the Chinese task never enters Average
    assert table.loc["K0.5", "Average"] == pytest.approx((50 + 65) / 2)
    w = {"hotpotqa": 0.5, "lcc": 0.5}
    assert (table.loc["K0.5", "Average lo"], table.loc["K0.5", "Average hi"]) == stats.bootstrap_ci(
        english, w
    )
    assert (table.loc["K0.5", "Code lo"], table.loc["K0.5", "Code hi"]) == stats.bootstrap_ci(
        {"lcc": pruned["lcc"]}
    )
    test = stats.paired_test(english, {t: v for t, v in dense.items() if t != "dureader"}, w)
    assert table.loc["K0.5", "Δ vs dense"] == pytest.approx(test.diff) == pytest.approx(-17.5)
    assert table.loc["K0.5", "within noise"] == ("yes" if test.within_noise else "no")
    assert pd.isna(table.loc["dense", "Δ vs dense"])
    md = (tmp_path / "lb" / "report" / "lb_tiny_longbench.md").read_text()
    assert f"{table.loc['K0.5', 'Average']:.2f} [{table.loc['K0.5', 'Average lo']:.2f}, " in md
    assert (
        "Average lo" not in md
        and "Average lo" in (tmp_path / "lb" / "report" / "lb_tiny_longbench.csv").read_text()
    )


def test_compare_cli_pairs_the_same_samples(tmp_path, capsys):
    from eval.report.compare import compare, main

    dense, pruned = {"vt": [100.0] * 6, "cwe": [100.0, 0.0] * 3}, {"vt": [100.0, 0.0] * 3, "cwe": [0.0] * 6}
    fake_job(tmp_path, "dense", dense)
    fake_job(tmp_path, "k5", pruned, k_sparsity=0.5, policy="K0.5")
    result = compare(tmp_path, "K0.5", "dense")
    assert result == stats.paired_test(pruned, dense, {"vt": 0.5, "cwe": 0.5})
    assert result.diff == pytest.approx(-50.0) and not result.within_noise
    main([str(tmp_path), "K0.5", "dense"])
    assert capsys.readouterr().out.startswith("K0.5 - dense: -50.00 [")
    fake_job(tmp_path, "other", dense, k_sparsity=0.7, policy="K0.7", samples_id="p2", seed=1)
    with pytest.raises(ValueError, match="not asked the same prompts"):
        compare(tmp_path, "K0.7", "dense")


def test_caption_names_each_sample_size_of_a_mixed_sweep():
    """A sweep whose jobs ran at different sample counts must not be captioned with one of them."""
    from types import SimpleNamespace

    from eval.report.make_tables import _caption

    def group(ns):
        jobs = pd.DataFrame({"n": ns})
        return SimpleNamespace(
            model="smollm2", bench="ruler-1024", tasks=["a", "b"], jobs=jobs, paper_match=False
        )

    assert "n = 20 samples per task, 3 jobs" in _caption(group([20, 20, 20]), "x", "s")
    assert "n = 20–60 (each job's in its row) samples per task, 3 jobs" in _caption(
        group([20, 60, 20]), "x", "s"
    )


def test_make_tables_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    """A sweep with no finished jobs and an unknown layout name: exit status 2 and a one-line error naming them."""
    from eval.report.make_tables import main

    with pytest.raises(SystemExit) as exit_:
        main(["nothing_here", "--results", str(tmp_path)])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err
        == f"error: no finished jobs under {tmp_path / 'nothing_here'} (run the sweep first)\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(["nothing_here", "--results", str(tmp_path), "--experiment", "main_grd"])
    assert exit_.value.code == 2 and "invalid choice: 'main_grd'" in capsys.readouterr().err


def test_paired_compare_script_pairs_whole_tasks_of_the_same_prompts(tmp_path, capsys):
    """scripts/paired_compare.py: a LongBench-E length bucket (metric name@bucket, same task name) is part of a task,
    never its samples; jobs asked different prompts are refused, not paired."""
    paired_compare = load_script("paired_compare")

    def job(name: str, overall: list[float], bucket: list[float], samples_id: str = "p1") -> Path:
        base = {
            "kind": "task",
            "task": "hotpotqa",
            "policy": name,
            "samples_id": samples_id,
            "benchmark": "longbench",
        }
        rows = [
            {**base, "metric": "qa_f1_score", "samples": overall},
            {**base, "metric": "qa_f1_score@8k+", "samples": bucket},
        ]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"rows": rows}))
        return path

    dense, pruned = job("dense", [50.0] * 4, [50.0, 50.0]), job("K0.5", [0.0] * 4, [50.0, 50.0])
    paired_compare.main([str(pruned), str(dense)])
    out = capsys.readouterr().out
    assert out.startswith("K0.5 − dense: -50.00 [") and out.rstrip().endswith("n = 4")
    other = job("K0.7", [0.0] * 4, [0.0, 0.0], samples_id="p2")
    with pytest.raises(SystemExit, match="not asked the same prompts"):
        paired_compare.main([str(other), str(dense)])


def test_paired_compare_script_compares_the_tables_english_avg(tmp_path, capsys):
    """The pair is over the tables' `avg`, a LongBench job's English tasks only: the jobs agree on hotpotqa (50 on
    each of 3 samples) and differ only on the Chinese dureader (90 vs 0), so A − B is +0.00 over hotpotqa's 3
    samples (over every task alike it was −45.00 over 6); a job of Chinese tasks only has no avg to compare."""
    longbench = dict(benchmark="longbench", benchmark_length=None)
    fake_job(tmp_path, "dense", {"hotpotqa": [50.0] * 3, "dureader": [90.0] * 3}, **longbench)
    fake_job(tmp_path, "k5", {"hotpotqa": [50.0] * 3, "dureader": [0.0] * 3}, **longbench, k_sparsity=0.5,
             policy="K0.5")  # fmt: skip
    summary = summary_frame(load_rows(tmp_path)).query("column == 'avg' and run_id == 'k5'").iloc[0]
    assert (summary["value"], summary["delta"]) == (50.0, 0.0)
    paired_compare = load_script("paired_compare")
    paired_compare.main([str(tmp_path / job / "result.json") for job in ("k5", "dense")])
    assert capsys.readouterr().out.startswith("K0.5 − dense: +0.00 [+0.00, +0.00], p = 1.000, n = 3\n")
    fake_job(tmp_path, "zh", {"dureader": [0.0] * 3}, **longbench)
    with pytest.raises(SystemExit, match="ran no English LongBench task"):
        paired_compare.main([str(tmp_path / job / "result.json") for job in ("zh", "zh")])
