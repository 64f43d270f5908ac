"""Result files: one folder per job under results/<sweep>/, written atomically, never silently overwritten.

A job is done when its result.json parses and validates (schema version, job id); sweeps skip done jobs, so an
interrupted sweep loses nothing finished, and a corrupt result is redone rather than trusted. Predictions are
written per task, so an interrupted job resumes at the next task.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

SCHEMA_VERSION = 2  # of result.json; a file with another version is not trusted as a finished job
FAILED_NAME = "failed.json"  # in a job folder: the last attempt's error and traceback
FILE_MODE = 0o644  # results are shared: readable by the group and others (mkstemp alone gives 0600)


class InvalidResult(ValueError):
    """A result or predictions file that exists but cannot be trusted; the message names the file."""


def warn(message: str) -> None:
    """One line on stderr, in the harness's own voice (Python warnings add a second, source line)."""
    print(f"[mustafar] warning: {message}", file=sys.stderr, flush=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write, fsync, then rename, then fsync the folder: after a crash the file is either old or whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """A task's saved predictions; InvalidResult when the file is truncated, corrupt or empty."""
    try:
        records = read_jsonl(path)
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidResult(f"{path} is corrupt ({err.__class__.__name__}: {err})") from None
    if not records or not all(isinstance(r, dict) for r in records):
        raise InvalidResult(f"{path} holds no prediction records")
    return records


def read_result(path: Path, job_id: str | None = None) -> dict[str, Any]:
    """A parsed result.json, checked against SCHEMA_VERSION and (when given) the job id it must belong to."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError) as err:
        raise InvalidResult(f"{path} is not a readable result ({err.__class__.__name__}: {err})") from None
    if not isinstance(result, dict):
        raise InvalidResult(f"{path} is not a result object")
    schema = result.get("schema")
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise InvalidResult(f"{path} has schema={schema!r}, this code reads schema={SCHEMA_VERSION}")
    if job_id is not None and result.get("job_id") != job_id:
        raise InvalidResult(f"{path} belongs to job {result.get('job_id')!r}, not {job_id!r}")
    rows = result.get("rows")
    if not isinstance(rows, list):
        raise InvalidResult(f"{path} has no list of rows")
    if not rows or not all(isinstance(r, dict) for r in rows):  # a finished job always has a row per score
        raise InvalidResult(f"{path} holds no result rows (rows must be a non-empty list of objects)")
    from eval.rows import row_key, row_problem

    seen: dict[tuple, int] = {}
    for i, row in enumerate(rows):  # each row the job's own, in the row schema: tables group rows by run_id
        problem = row_problem(row)
        if problem:
            raise InvalidResult(f"{path} row {i} {problem}")
        if row.get("run_id") != result.get("job_id"):
            raise InvalidResult(
                f"{path} row {i} belongs to run {row.get('run_id')!r}, not to its job {result.get('job_id')!r}"
            )
        first = seen.setdefault(row_key(row), i)
        if first != i:  # one table would show one copy's score, another the other's
            raise InvalidResult(
                f"{path} row {i} repeats row {first}'s score ({row['kind']} {row['task']!r}, metric {row['metric']!r})"
            )
    return result


def valid_result(path: Path, job_id: str | None, action: str) -> dict[str, Any] | None:
    """The result if the file exists and validates; None if it is missing or invalid (then a warning naming the
    file and saying what happens instead: `action`)."""
    if not path.exists():
        return None
    try:
        return read_result(path, job_id)
    except InvalidResult as err:
        warn(f"{err}; {action}")
        return None


@functools.cache
def git_sha() -> str | None:
    """The code's commit, read once per process (a sweep's jobs all report the code they were loaded from);
    "+dirty" marks uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=here
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            cwd=here,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def load_rows(sweep_dir: Path) -> pd.DataFrame:
    """Every result row of every finished job under `sweep_dir` (long format); an invalid result file is left
    out with a warning naming it (its job is redone by the next sweep that includes it)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(sweep_dir).glob("*/result.json")):
        result = valid_result(path, path.parent.name, "left out of the table")
        if result is not None:
            rows.extend(result["rows"])
    return pd.DataFrame(rows)


def unwritable(folder: Path, results_dir: str | Path) -> str | None:
    """Why `folder` (results_dir or a folder under it) cannot be made or take a file, naming results_dir; None
    when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"results_dir={str(results_dir)!r} is not writable ({err.__class__.__name__}: {err})"
    return None
