"""Paired comparison of two finished jobs on the same prompts: A − B of the tables' `avg` (eval.averages: the mean
of the task scores, a LongBench job's English tasks only), its paired-bootstrap 95% CI and the sign-flip p-value
(eval.stats.paired_test), from each job's result.json.

Usage: python scripts/paired_compare.py A/result.json B/result.json [C/result.json D/result.json ...]
(pairs: A vs B, C vs D, ...). The experiments' READMEs quote its output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.averages import weights  # noqa: E402
from eval.stats import Paired, Samples, paired_test  # noqa: E402
from eval.tables import HEADLINE  # noqa: E402


def refuse(message: str) -> NoReturn:
    """Print `error: message` and exit 2, as argparse does for a usage error: the user's input is wrong, so one
    line, not a traceback. The SystemExit carries the line too, for callers and tests."""
    line = f"error: {message}"
    print(line, file=sys.stderr)
    err = SystemExit(line)
    err.code = 2
    raise err


def _rows(path: Path) -> list[dict]:
    """The result rows of `path`, refusing a missing file, a folder or a file that is no result.json."""
    try:
        rows = json.loads(path.read_text())["rows"]
    except FileNotFoundError:
        refuse(f"{path}: no such file")
    except IsADirectoryError:
        refuse(f"{path}: a folder, not a result.json (give <job>/result.json)")
    except OSError as err:
        refuse(f"{path}: cannot read it ({err.strerror})")
    except (ValueError, KeyError, TypeError):
        refuse(f"{path}: not a result.json (no rows)")
    return rows


def task_rows(rows: list[dict]) -> list[dict]:
    """The task rows of a result; LongBench-E's length-bucket rows (metric ``<name>@<bucket>``) are parts of a
    task, not tasks (scripts/eviction_table.py shares it)."""
    return [r for r in rows if r.get("kind") == "task" and "@" not in str(r.get("metric", ""))]


def task_samples(path: Path) -> tuple[str, str | None, str, dict[str, list[float]]]:
    """(policy label, samples_id, benchmark, {task: per-sample scores}) of one result.json."""
    rows = task_rows(_rows(path))
    if not rows:
        refuse(f"{path}: no task rows (is it a finished job's result.json?)")
    first = rows[0]
    return (
        first["policy"],
        first.get("samples_id"),
        first["benchmark"],
        {r["task"]: r["samples"] for r in rows},
    )


def average_weights(name: str, benchmark: str, tasks: Iterable[str]) -> dict[str, float]:
    """The tables' `avg` over `tasks` (eval.averages: equal weights, over a LongBench job's English tasks only);
    refused for job `name` where it has no task (a LongBench job of Chinese tasks only)."""
    w = weights(benchmark, tasks).get(HEADLINE)
    if not w:
        refuse(f"{name} ran no English LongBench task: it has no {HEADLINE} to compare")
    return w


def paired_or_refuse(
    a: str, id_a: str | None, sa: Samples, b: str, id_b: str | None, sb: Samples, w: dict[str, float]
) -> Paired:
    """paired_test(sa, sb, w) of jobs `a` and `b`, refused unless both were asked the same prompts: the same
    samples_id, the same tasks and the same number of samples per task (scripts/eviction_table.py shares it)."""
    if id_a != id_b:
        refuse(f"{a} and {b} were not asked the same prompts (samples_id {id_a} vs {id_b}): no paired test")
    try:
        return paired_test(sa, sb, w)
    except ValueError as err:  # different task lists or sample counts
        refuse(f"{a} and {b}: {err}")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or len(argv) % 2:
        raise SystemExit(__doc__)
    for a, b in zip(argv[::2], argv[1::2]):
        (la, ia, bench, sa), (lb, ib, _, sb) = task_samples(Path(a)), task_samples(Path(b))
        p = paired_or_refuse(a, ia, sa, b, ib, sb, average_weights(a, bench, sa))
        print(f"{la} − {lb}: {p.diff:+.2f} [{p.low:+.2f}, {p.high:+.2f}], p = {p.p_value:.3f}, n = {p.n}")


if __name__ == "__main__":
    main(sys.argv[1:])
