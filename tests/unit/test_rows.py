"""The result-row schema: per-sample scores from both benchmarks, summary rows from eval.averages with CIs, the
schema refusing unknown fields, and what W&B gets."""

from __future__ import annotations

import pytest

from eval import stats, wandb_log
from eval.common import Score
from eval.longbench.benchmark import score_records
from eval.rows import ResultRow, score_rows
from eval.ruler.benchmark import RulerBenchmark
from tests.unit.fake_results import JOB


def test_ruler_and_longbench_scores_carry_their_per_sample_values():
    preds = [
        {"pred": "a b", "answers": ["a", "b"]},
        {"pred": "a", "answers": ["a", "b"]},
        {"pred": "", "answers": ["a"]},
    ]
    (ruler,) = RulerBenchmark.score(object.__new__(RulerBenchmark), "vt", preds)
    assert ruler.samples == [100.0, 50.0, 0.0] and ruler.value == 50.0 and ruler.n == 3
    records = [{"pred": "Paris", "answers": ["Paris"]}, {"pred": "Paris France", "answers": ["Paris"]}]
    (longbench,) = score_records("hotpotqa", records)
    assert longbench.samples == pytest.approx([100.0, 100 * 2 / 3])  # token F1: P 1/2, R 1 -> 2/3
    assert longbench.value == round(sum(longbench.samples) / 2, 2)


def test_score_rows_summaries_follow_the_averages_with_cis():
    job = {**JOB, "run_id": "j", "samples_id": "p", "benchmark": "longbench", "benchmark_length": None}
    job["benchmark_config"] = {"name": "longbench"}
    samples = {"hotpotqa": [100.0, 0.0, 50.0], "lcc": [80.0, 40.0], "dureader": [0.0, 0.0, 0.0]}
    scores = [Score(t, "m", round(sum(v) / len(v), 2), len(v), v) for t, v in samples.items()]
    rows = {(r.kind, r.task): r for r in score_rows(job, "longbench", scores)}
    assert rows[("task", "lcc")].samples == [80.0, 40.0]
    assert (rows[("task", "lcc")].ci_low, rows[("task", "lcc")].ci_high) == stats.bootstrap_ci(
        {"lcc": [80, 40]}
    )
    avg = rows[("summary", "avg")]
    assert avg.value == 55.0 and avg.n == 2  # (50 + 60) / 2: dureader (Chinese) never enters avg
    english = {t: samples[t] for t in ("hotpotqa", "lcc")}
    assert (avg.ci_low, avg.ci_high) == stats.bootstrap_ci(english, {"hotpotqa": 0.5, "lcc": 0.5})
    assert rows[("summary", "avg_zh")].value == pytest.approx((0 + 60) / 2)  # zh categories: Multi-Doc, Code
    assert rows[("summary", "avg")].samples is None


def test_result_row_round_trips_and_refuses_unknown_fields():
    job = {**JOB, "run_id": "j", "samples_id": "p", "benchmark_config": {"name": "ruler"}}
    (row, _) = score_rows(job, "ruler", [Score("vt", "string_match_all", 50.0, 2, [100.0, 0.0])])
    assert ResultRow.from_dict(row.to_dict()) == row
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        ResultRow.from_dict({**row.to_dict(), "colour": "red"})


def test_wandb_gets_n_and_ci_per_score_without_the_sample_lists():
    job = {**JOB, "run_id": "j", "samples_id": "p", "benchmark_config": {"name": "ruler"}}
    rows = score_rows(job, "ruler", [Score("vt", "string_match_all", 50.0, 2, [100.0, 0.0])])
    table = wandb_log.table_frame(rows)
    assert "samples" not in table and {"value", "ci_low", "ci_high", "n"} <= set(table.columns)
    metrics = wandb_log.job_metrics(rows)
    summary = {k: metrics[k] for k in ("avg", "avg/ci_low", "avg/ci_high", "avg/n")}
    assert summary == {"avg": 50.0, "avg/ci_low": 0.0, "avg/ci_high": 100.0, "avg/n": 2}


def test_every_consumer_reads_fields_the_schema_has():
    from eval.report import layout, policies
    from eval.rows import COLUMNS
    from eval.tables import IDENTITY_FIELDS, POLICY_ORDER

    for fields in (layout.JOB_FIELDS, policies.KEY_FIELDS, IDENTITY_FIELDS, POLICY_ORDER):
        assert set(fields) <= set(COLUMNS), set(fields) - set(COLUMNS)


def test_every_policy_field_has_a_row_field():
    """A job writes every KVConfig field into its rows: a new kv knob needs its ResultRow field (else the job fails
    at its end, after the generation has run)."""
    from dataclasses import fields

    from eval.rows import ResultRow
    from mustafar.config import KVConfig

    missing = {f.name for f in fields(KVConfig)} - {f.name for f in fields(ResultRow)}
    assert not missing, f"KVConfig fields without a ResultRow field: {sorted(missing)}"


def test_per_sample_scores_are_unrounded_and_averages_take_the_reported_task_scores():
    """A sample that finds one of three references scores 100/3 (not 33.33); an average is the mean of the
    reported 2-decimal task scores, as LongBench and RULER average them ((66.67 + 100) / 2 -> 83.34, where
    the per-sample means would give 83.33); a task score rounds as RULER's `round(sum / n * 100, 2)` does even
    where the other order's float lands across a tie."""
    preds = [{"pred": "a", "answers": ["a", "b", "c"]}]
    (third,) = RulerBenchmark.score(object.__new__(RulerBenchmark), "vt", preds)
    assert third.samples == pytest.approx([100 / 3], rel=1e-12) and third.value == 33.33
    job = {**JOB, "run_id": "j", "samples_id": "p", "benchmark_config": {"name": "ruler"}}
    scores = [Score("vt", "m", 66.67, 3, [100.0, 100.0, 0.0]), Score("cwe", "m", 100.0, 3, [100.0] * 3)]
    avg = next(r for r in score_rows(job, "ruler", scores) if r.task == "avg")
    assert avg.value == 83.34
    kept = [3, 1, 4, 4, 2, 1, 1, 1, 0, 1, 1, 0, 2, 1, 1, 2, 4, 0, 2, 1, 2, 1, 3, 3, 4, 0, 3, 1, 4, 1, 2, 3, 1, 1, 3,
            1, 2, 1, 4, 1]  # fmt: skip
    refs = [4, 3, 4, 4, 3, 4, 3, 4, 4, 2, 2, 4, 3, 2, 3, 3, 4, 4, 3, 2, 3, 4, 4, 4, 4, 4, 4, 2, 4, 4, 3, 4, 2, 2, 4,
            4, 3, 3, 4, 2]  # fmt: skip
    preds = [
        {"pred": " ".join(f"w{i}" for i in range(k)), "answers": [f"w{i}" for i in range(r)]}
        for k, r in zip(kept, refs)
    ]
    fractions = [k / r for k, r in zip(kept, refs)]
    assert round(100 * sum(fractions) / 40, 2) != round(sum(fractions) / 40 * 100, 2)  # a float tie case
    (score,) = RulerBenchmark.score(object.__new__(RulerBenchmark), "vt", preds)
    assert score.value == round(sum(fractions) / 40 * 100, 2)


def test_rescored_ruler_samples_are_unrounded_like_the_rows(tmp_path):
    """Jobs whose rows lack per-sample scores are re-scored from predictions; a sample naming 1 of 3 references
    must score 100/3 there too, not the rounded 33.33."""
    import json

    from eval.report.samples import sample_scores

    (tmp_path / "predictions").mkdir()
    record = {"task": "fwe", "index": 0, "pred": "a x y", "answers": ["a", "b", "c"]}
    (tmp_path / "predictions" / "fwe.jsonl").write_text(json.dumps(record) + "\n")
    assert sample_scores(tmp_path, "ruler")["score"].tolist() == pytest.approx([100 / 3], rel=1e-12)
