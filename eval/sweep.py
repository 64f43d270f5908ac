"""A sweep that survives its own faults: every job validated up front, a failing job recorded and passed over,
workers that die with their sweep, and an end-of-sweep account of every job that did not finish.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from eval.joblock import LOCK_NAME, live_owner
from eval.results import FAILED_NAME, read_result, warn

log = logging.getLogger("mustafar")

SWEEP_PARENT_ENV = "MUSTAFAR_SWEEP_PARENT"  # "<pid>@<host>" of the process that launched the sweep's workers


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input, not a bug: one line, no traceback."""
    from eval.longbench.data import DataUnavailable
    from mustafar.config import ConfigError
    from mustafar.models import ModelUnavailable

    return (ConfigError, ModelUnavailable, DataUnavailable, FileNotFoundError)


@dataclass
class PlannedJob:
    """One job of a multirun as expanded before anything runs: its overrides, and its job or its config error."""

    overrides: list[str]
    job: Any = None  # eval.job.Job when the config validated
    error: str | None = None
    varying: tuple[str, ...] | None = None  # the override keys that differ between the sweep's jobs

    @property
    def label(self) -> str:
        shown = [o for o in self.overrides if self.varying is None or o.split("=", 1)[0] in self.varying]
        return " ".join(shown or self.overrides) or "(no overrides)"  # a one-job sweep varies nothing


def job_overrides(config: Any) -> list[list[str]]:
    """The override list of every job the basic sweeper will launch, in its order (hydra.sweeper.params first,
    then the command line, expanded as a cartesian product)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def plan(config: Any) -> list[PlannedJob] | None:
    """Compose and validate every job of the multirun without loading a model; None when the sweeper is not the
    basic one (its jobs cannot be listed in advance)."""
    from hydra import compose
    from omegaconf import OmegaConf

    from eval.job import Job

    if not str(OmegaConf.select(config, "hydra.sweeper._target_") or "").endswith("BasicSweeper"):
        return None
    jobs = job_overrides(config)
    values: dict[str, set[str]] = {}
    for overrides in jobs:
        for override in overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    varying = tuple(k for k, v in values.items() if len(v) > 1)
    planned = []
    for overrides in jobs:
        entry = PlannedJob(overrides, varying=varying)
        try:
            cfg = compose(config.hydra.job.config_name, overrides=overrides)
            entry.job = Job.from_config(OmegaConf.to_container(cfg, resolve=True))
        except Exception as err:  # a job's config error is reported with its overrides; the sweep goes on
            entry.error = f"{err.__class__.__name__}: {err}" if not isinstance(err, ValueError) else str(err)
        planned.append(entry)
    return planned


def watch_parent(poll_s: float = 0.5) -> None:
    """In a worker process of a local parallel sweep: exit when the sweep process is gone (SIGKILL of the sweep
    would otherwise leave its workers computing jobs on their own). A no-op in the sweep process itself."""
    parent = os.environ.get(SWEEP_PARENT_ENV, "")
    pid, _, host = parent.partition("@")
    if not pid.isdigit() or int(pid) == os.getpid() or host != platform.node() or _watching.is_set():
        return
    _watching.set()
    first_parent = os.getppid()

    def watch() -> None:
        while os.getppid() == first_parent:
            time.sleep(poll_s)
        os._exit(70)  # reparented: the process that spawned this worker has died

    threading.Thread(target=watch, name="mustafar-parent-watch", daemon=True).start()


_watching = threading.Event()


def run_job(cfg: dict[str, Any], multirun: bool) -> tuple[int, str | None]:
    """Validate and run one job; returns an exit code and the job id (None when the config is invalid). User errors are one line; bugs keep their traceback (in the
    job's log under a multirun, where raising would stop the whole sweep); Ctrl-C is one line and exit 130."""
    from eval.job import Job

    try:
        job = Job.from_config(cfg)
    except (ValueError, *_user_errors()) as err:  # all of validation is about the user's input
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2, None
    if multirun:
        watch_parent()
    try:
        written = job.run()
        if written is None and not multirun and not job.done:  # a multirun lists it in its summary instead
            print(
                f"error: {job.job_id} is running elsewhere: no result yet; run again when that process ends",
                file=sys.stderr,
                flush=True,
            )
            return 1, job.job_id
    except KeyboardInterrupt:
        interrupted(job)
    except _user_errors() as err:
        print(f"error: {job.job_id}: {err}", file=sys.stderr, flush=True)
        return 2, job.job_id
    except Exception:
        if not multirun:
            raise
        log.exception("job %s failed (recorded in %s)", job.job_id, job.dir / "failed.json")
        return 1, job.job_id
    return 0, job.job_id


def interrupted(job: Any) -> NoReturn:
    """Ctrl-C: one line instead of a traceback, and exit 130 (128 + SIGINT), which also ends a multirun. Job.run
    released the job's lock on the way out."""
    print(
        f"[mustafar] interrupted: job {job.job_id} stopped unfinished; finished results are kept in "
        f"{job.dir.parent}",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(130)


@dataclass
class Unfinished:
    label: str
    state: str  # invalid config | failed | running elsewhere | not finished
    detail: str
    folder: Path | None = None  # the sweep folder the job writes to (None: an invalid config, no job)


def unfinished(planned: list[PlannedJob]) -> list[Unfinished]:
    """Every planned job without a valid result after the sweep, and why."""
    out, seen = [], set()
    for entry in planned:
        if entry.job is None:
            out.append(Unfinished(entry.label, "invalid config", entry.error or ""))
            continue
        job = entry.job
        if job.job_id in seen:
            continue
        seen.add(job.job_id)
        failed = job.dir / FAILED_NAME
        try:
            read_result(job.result_path, job.job_id)
            # force=true asked for a redo: failed.json (removed when an attempt starts) says the last one failed,
            # and the result is an earlier run's
            if job.force and failed.exists():
                out.append(
                    Unfinished(
                        job.job_id,
                        "failed",
                        f"{_failure_line(failed)}; force=true did not redo it: {job.result_path} is an earlier "
                        "run's",
                        job.dir.parent,
                    )
                )
            continue
        except ValueError as err:
            why = str(err) if job.result_path.exists() else "no result.json"
        owner = live_owner(job.dir / LOCK_NAME)
        if owner is not None:
            out.append(Unfinished(job.job_id, "running elsewhere", owner.describe(), job.dir.parent))
        elif failed.exists():
            out.append(Unfinished(job.job_id, "failed", _failure_line(failed), job.dir.parent))
        else:
            out.append(Unfinished(job.job_id, "not finished", why, job.dir.parent))
    return out


def _failure_line(path: Path) -> str:
    import json

    try:
        return f"{json.loads(path.read_text(encoding='utf-8'))['error']} (traceback in {path})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"see {path}"


def render_unfinished(items: list[Unfinished]) -> str:
    lines = [f"## Jobs without a result ({len(items)})", ""]
    lines += [f"- {u.state}: {u.label}: {u.detail}" for u in items]
    return "\n".join(lines)


def report_unfinished(sweep_dir: Path, table: str, items: list[Unfinished]) -> None:
    """Write summary.md as the rendered `table` followed by the list, and print the list."""
    from eval.results import atomic_write_text

    if not items:
        return
    text = render_unfinished(items)
    summary = sweep_dir / "summary.md"
    try:
        atomic_write_text(summary, f"{table.rstrip()}\n\n{text}\n")
    except OSError as err:
        warn(f"could not write {summary}: {err}")
    print(text, file=sys.stderr, flush=True)
