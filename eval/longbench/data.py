"""LongBench v1 data: task lists, locating / downloading the official jsonl files, schema validation.

The data is the `data/` folder of the official `data.zip` (HF dataset repo THUDM/LongBench). We read the raw
jsonl rather than the HF loading script, which needs `trust_remote_code` and breaks on `datasets>=4`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

# All 21 tasks in the order of the paper's tables (docs/evaluation.md §1.2).
ALL_TASKS: tuple[str, ...] = (
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "multifieldqa_zh",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "dureader",
    "gov_report",
    "qmsum",
    "multi_news",
    "vcsum",
    "trec",
    "triviaqa",
    "samsum",
    "lsht",
    "passage_count",
    "passage_retrieval_en",
    "passage_retrieval_zh",
    "lcc",
    "repobench-p",
)
CHINESE_TASKS: frozenset[str] = frozenset(
    {"multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"}
)
# The 16 tasks of the English leaderboard table (14 English + 2 code).
DEFAULT_TASKS: tuple[str, ...] = tuple(t for t in ALL_TASKS if t not in CHINESE_TASKS)
# Tasks that have a LongBench-E file `<task>_e.jsonl`.
E_TASKS: tuple[str, ...] = (
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "gov_report",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_count",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
)
# Official record counts (docs/evaluation.md §1.1); a mismatch on a full load is warned about, not fatal (subsets, fixtures).
EXPECTED_COUNTS: dict[str, int] = {t: 200 for t in ALL_TASKS} | {
    "multifieldqa_en": 150,
    "lcc": 500,
    "repobench-p": 500,
}
EXPECTED_COUNTS_E: dict[str, int] = {t: 300 for t in E_TASKS} | {
    "multifieldqa_en": 150,
    "qasper": 224,
    "multi_news": 294,
}

HF_REPO_ID = "THUDM/LongBench"
HF_FILENAME = "data.zip"
DOWNLOAD_HINT = (
    "Provide the `data/` folder of the official LongBench data.zip: download it with\n"
    "  python -c \"from huggingface_hub import hf_hub_download; print(hf_hub_download(repo_id='THUDM/LongBench', "
    "filename='data.zip', repo_type='dataset'))\"\n"
    "unzip it, and pass benchmark.data_dir=/path/to/data (leave data_dir unset to download and unpack it "
    "automatically into the cache folder)."
)

# field -> (check, description) for the 8-field record schema.
_SCHEMA: dict[str, tuple[Any, str]] = {
    "input": (lambda v: isinstance(v, str), "str"),
    "context": (lambda v: isinstance(v, str), "str"),
    "answers": (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v), "list[str]"),
    "length": (lambda v: isinstance(v, int) and not isinstance(v, bool), "int"),
    "dataset": (lambda v: isinstance(v, str), "str"),
    "language": (lambda v: isinstance(v, str), "str"),
    "all_classes": (
        lambda v: v is None or (isinstance(v, list) and all(isinstance(c, str) for c in v)),
        "list[str] or null",
    ),
    "_id": (lambda v: isinstance(v, str), "str"),
}
SCHEMA_FIELDS: tuple[str, ...] = tuple(_SCHEMA)


def resolve_tasks(tasks: list[str] | tuple[str, ...] | None, longbench_e: bool = False) -> list[str]:
    """Validate task names; None means the 16 English tasks (the E-tasks only, for LongBench-E)."""
    if tasks is None:
        return [t for t in DEFAULT_TASKS if not longbench_e or t in E_TASKS]
    if isinstance(tasks, str):
        tasks = [tasks]
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise ValueError(f"unknown LongBench task(s) {unknown}; allowed: {list(ALL_TASKS)}")
    if longbench_e:
        missing = [t for t in tasks if t not in E_TASKS]
        if missing:
            raise ValueError(f"LongBench-E has no data for {missing}; LongBench-E tasks: {list(E_TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"duplicate LongBench tasks in {list(tasks)}")
    return list(tasks)


def default_cache_dir() -> Path:
    """Where the downloaded data.zip is unpacked: $MUSTAFAR_LONGBENCH_CACHE or ~/.cache/mustafar/longbench."""
    if "MUSTAFAR_LONGBENCH_CACHE" in os.environ:
        return Path(os.environ["MUSTAFAR_LONGBENCH_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "mustafar" / "longbench"


class DataUnavailable(RuntimeError):
    """The LongBench data could not be fetched: the user's setup (network, a local copy), not a bug."""


def download_data(cache_dir: Path | None = None) -> Path:
    """Download data.zip from the hub and unpack it once; returns the folder holding the jsonl files."""
    cache_dir = cache_dir or default_cache_dir()
    data_dir, done = cache_dir / "data", cache_dir / ".unpacked"
    if done.exists() and data_dir.is_dir():
        return data_dir
    try:
        from huggingface_hub import hf_hub_download

        archive = hf_hub_download(repo_id=HF_REPO_ID, filename=HF_FILENAME, repo_type="dataset")
    except Exception as exc:  # network, auth, missing package: all leave the user with the same manual route
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataUnavailable(
            f"could not download LongBench {HF_FILENAME} from {HF_REPO_ID} ({reason})\n{DOWNLOAD_HINT}"
        ) from exc
    cache_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(cache_dir)
    if not data_dir.is_dir():
        raise RuntimeError(f"{archive} did not contain a data/ folder (unpacked into {cache_dir})")
    done.write_text(str(archive))
    return data_dir


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The folder holding `<task>.jsonl`; a folder whose `data/` subfolder holds them is accepted too."""
    if data_dir is None:
        return download_data()
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"LongBench data folder {path} does not exist.\n{DOWNLOAD_HINT}")
    if not any(path.glob("*.jsonl")) and (path / "data").is_dir():
        return path / "data"
    return path


def task_file(data_dir: Path, task: str, longbench_e: bool = False) -> Path:
    """Path of a task's jsonl file; a clear error when it is missing."""
    path = data_dir / (f"{task}_e.jsonl" if longbench_e else f"{task}.jsonl")
    if not path.is_file():
        raise FileNotFoundError(f"LongBench data file {path} is missing.\n{DOWNLOAD_HINT}")
    return path


def validate_record(record: Any, path: Path, line_no: int) -> None:
    """Check the 8-field schema; the error names file, line and field."""
    where = f"{path}:{line_no}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name, (check, kind) in _SCHEMA.items():
        if name not in record:
            raise ValueError(
                f"{where}: missing field {name!r} (LongBench records need {list(SCHEMA_FIELDS)})"
            )
        if not check(record[name]):
            raise ValueError(f"{where}: field {name!r} must be {kind}, got {record[name]!r:.80}")


def load_task(
    data_dir: Path, task: str, longbench_e: bool = False, n: int | None = None
) -> list[dict[str, Any]]:
    """The first `n` (default all) validated records of one task."""
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of samples per task, got {n}")
    path = task_file(data_dir, task, longbench_e)
    records: list[dict[str, Any]] = []
    with path.open("rb") as f:  # decoded line by line, so a bad byte is reported on its own line
        for line_no, raw in enumerate(f, start=1):
            if n is not None and len(records) >= n:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not UTF-8 text ({exc})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc})") from exc
            validate_record(record, path, line_no)
            records.append(record)
    if not records:
        raise ValueError(f"LongBench data file {path} holds no records")
    expected = (EXPECTED_COUNTS_E if longbench_e else EXPECTED_COUNTS)[task]
    if n is None and len(records) != expected:
        warnings.warn(f"{path} holds {len(records)} records; the official file has {expected}", stacklevel=2)
    return records


def validate_files(
    data_dir: Path, tasks: list[str] | None, longbench_e: bool = False, n: int | None = None
) -> None:
    """Read and validate the records a run will use from every selected task file, so that a bad file stops
    the run before any model work instead of after the tasks before it have been generated."""
    for task in resolve_tasks(tasks, longbench_e):
        load_task(data_dir, task, longbench_e, n)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
