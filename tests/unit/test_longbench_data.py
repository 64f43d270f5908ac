"""LongBench data loading (schema, errors, download cache) and the pinned prompt / maxlen package data."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import huggingface_hub
import pytest

from eval.longbench import data
from eval.longbench.benchmark import LongBenchBenchmark
from eval.longbench.prompts import MAXLEN, PROMPTS, format_prompt

FIXTURES = Path(__file__).parents[1] / "fixtures" / "longbench" / "data"
pytestmark = pytest.mark.filterwarnings("ignore:.*the official file has:UserWarning")


def canonical_sha256(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ---- prompts.json / maxlen.json -------------------------------------------------------------------------------


def test_prompt_templates_pinned_by_hash():
    assert list(PROMPTS) == list(data.ALL_TASKS)
    assert canonical_sha256(PROMPTS) == "e7d865d712fe45e2455f5e864ac474001d7758d68d349e76ffbcdd382483358f"


def test_maxlen_pinned_by_hash():
    assert list(MAXLEN) == list(data.ALL_TASKS)
    assert canonical_sha256(MAXLEN) == "39a79d9491ead3dc8bcea6dbd8b963b29248eb4c344dde1e176b0a58b4e758a9"
    assert (MAXLEN["narrativeqa"], MAXLEN["hotpotqa"], MAXLEN["gov_report"], MAXLEN["lcc"]) == (
        128,
        32,
        512,
        64,
    )


def test_prompt_template_quirks_are_kept():
    assert PROMPTS["narrativeqa"].count("asconcisely") == 2
    assert "\n\n Answer the question based on the above article" in PROMPTS["qasper"]
    assert "Write a one-page summary of all news. \n\n" in PROMPTS["multi_news"]
    assert PROMPTS["passage_count"].endswith("The final answer is: ")
    assert PROMPTS["passage_retrieval_en"].endswith("The answer is: ")
    assert PROMPTS["lcc"] == "Please complete the code given below. \n{context}Next line of code:\n"
    assert PROMPTS["repobench-p"].endswith("{context}{input}Next line of code:\n")
    no_input = {t for t, p in PROMPTS.items() if "{input}" not in p}
    assert no_input == {"gov_report", "multi_news", "vcsum", "passage_count", "lcc"}
    assert all(p.count("{context}") == 1 for p in PROMPTS.values())


def test_format_prompt_leaves_braces_in_data_alone():
    record = {"context": "def f(): return {x}", "input": "{y}"}
    assert format_prompt("repobench-p", record).endswith("def f(): return {x}{y}Next line of code:\n")


# ---- task selection -------------------------------------------------------------------------------------------


def test_default_tasks_are_the_16_english_table_tasks():
    assert len(data.DEFAULT_TASKS) == 16 and len(data.ALL_TASKS) == 21 and len(data.E_TASKS) == 13
    assert data.resolve_tasks(None) == list(data.DEFAULT_TASKS)
    assert data.resolve_tasks(None, longbench_e=True) == [t for t in data.DEFAULT_TASKS if t in data.E_TASKS]


def test_unknown_task_lists_allowed_names():
    with pytest.raises(ValueError, match="unknown LongBench task.*'nope'.*narrativeqa.*repobench-p"):
        data.resolve_tasks(["hotpotqa", "nope"])


def test_longbench_e_rejects_tasks_without_e_file():
    with pytest.raises(ValueError, match="LongBench-E has no data for \\['narrativeqa'\\]"):
        data.resolve_tasks(["narrativeqa", "hotpotqa"], longbench_e=True)


# ---- loading --------------------------------------------------------------------------------------------------


def test_load_fixture_records_and_first_n():
    records = data.load_task(FIXTURES, "hotpotqa")
    assert len(records) == 3 and set(data.SCHEMA_FIELDS) <= set(records[0])
    assert data.load_task(FIXTURES, "hotpotqa", n=2) == records[:2]
    assert [r["length"] for r in data.load_task(FIXTURES, "hotpotqa", longbench_e=True)] == [
        1200,
        3999,
        4000,
        9500,
    ]


def test_count_mismatch_is_a_warning():
    with pytest.warns(UserWarning, match="holds 3 records; the official file has 200"):
        data.load_task(FIXTURES, "hotpotqa")


def test_data_dir_may_be_the_parent_of_data():
    assert data.resolve_data_dir(FIXTURES.parent) == FIXTURES
    assert data.resolve_data_dir(FIXTURES) == FIXTURES


def test_missing_folder_error_names_path_and_how_to_get_data(tmp_path):
    missing = tmp_path / "nowhere"
    bench = LongBenchBenchmark(None, tasks=["hotpotqa"], data_dir=str(missing))
    with pytest.raises(FileNotFoundError) as err:
        bench.samples("hotpotqa")
    msg = str(err.value)
    assert str(missing) in msg and "benchmark.data_dir=" in msg and "hf_hub_download" in msg


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"qasper_e\.jsonl is missing(.|\n)*benchmark\.data_dir="):
        data.load_task(tmp_path, "qasper", longbench_e=True)


def _write(tmp_path: Path, task: str, lines: list[str]) -> Path:
    path = tmp_path / f"{task}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("answers", None, "missing field 'answers'"),
        ("length", "12", "field 'length' must be int"),
        ("length", True, "field 'length' must be int"),
        ("answers", "Paris", r"field 'answers' must be list\[str\]"),
        ("all_classes", [1, 2], r"field 'all_classes' must be list\[str\] or null"),
    ],
)
def test_bad_schema_error_names_file_line_and_field(tmp_path, field, value, match):
    good = json.loads((FIXTURES / "hotpotqa.jsonl").read_text(encoding="utf-8").splitlines()[0])
    bad = dict(good)
    if value is None:
        del bad[field]
    else:
        bad[field] = value
    path = _write(tmp_path, "hotpotqa", [json.dumps(good), json.dumps(bad)])
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}:2: {match}"):
        data.load_task(tmp_path, "hotpotqa")


def test_invalid_json_and_empty_file(tmp_path):
    path = _write(tmp_path, "trec", ["{not json"])
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}:1: not valid JSON"):
        data.load_task(tmp_path, "trec")
    path = _write(tmp_path, "samsum", [""])
    with pytest.raises(ValueError, match="holds no records"):
        data.load_task(tmp_path, "samsum")


def test_a_line_that_is_not_utf8_is_named_by_its_own_number(tmp_path):
    good = (FIXTURES / "hotpotqa.jsonl").read_bytes().splitlines()[0]
    path = tmp_path / "trec.jsonl"
    path.write_bytes(b"\n".join([good, good, good, b"\xff\xfe", good]) + b"\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}:4: not UTF-8 text"):
        data.load_task(tmp_path, "trec")


# ---- download path (mocked: tests never touch the network) ----------------------------------------------------


def test_download_unpacks_once_into_cache(tmp_path, monkeypatch):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(FIXTURES / "hotpotqa.jsonl", "data/hotpotqa.jsonl")
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(archive)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("MUSTAFAR_LONGBENCH_CACHE", str(tmp_path / "cache"))
    first = data.resolve_data_dir(None)
    second = data.resolve_data_dir(None)
    assert first == second == tmp_path / "cache" / "data"
    assert calls == [{"repo_id": "THUDM/LongBench", "filename": "data.zip", "repo_type": "dataset"}]
    assert len(data.load_task(first, "hotpotqa")) == 3


def test_download_failure_explains_manual_route(tmp_path, monkeypatch):
    def offline(**kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setenv("MUSTAFAR_LONGBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="network is unreachable(.|\n)*benchmark.data_dir="):
        data.resolve_data_dir(None)
