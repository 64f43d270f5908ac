"""Result files: one folder per job under results/<sweep>/, written atomically, never silently overwritten.

A job is done when its result.json exists; sweeps skip done jobs, so an interrupted sweep loses nothing finished.
Predictions are written per task, so an interrupted job resumes at the next task.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


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
    """Every result row of every finished job under `sweep_dir` (long format)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(sweep_dir).glob("*/result.json")):
        with open(path, encoding="utf-8") as f:
            rows.extend(json.load(f)["rows"])
    return pd.DataFrame(rows)
