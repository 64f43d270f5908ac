"""Around a run: before Hydra creates its output folder under `results_dir`, refuse a results_dir that cannot take
a file (one error line, exit 2, instead of Hydra's traceback).

Around a multirun. At the start: validate every job's config before any model loads, and make local parallel
workers exit with the sweep. At the end: print the sweep's table with every job that has no result (failed,
invalid, running elsewhere), write the paper-style report, log a W&B summary run, and exit non-zero when a job
of this sweep has no result.

The report (results/<sweep>/report/: paper-layout tables and plots) is built for sweeps that are experiments
(conf/experiment/<sweep>.yaml, or the `+experiment=` choice) and whenever the W&B logger is on, so that the sweep's
W&B group gets its summary run (tables + plots) next to the per-job runs.
"""

from __future__ import annotations

import os
import platform
import sys
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from eval.results import unwritable, warn
from eval.sweep import SWEEP_PARENT_ENV, PlannedJob, Unfinished, plan, report_unfinished, unfinished
from eval.tables import render, write_summary

EXPERIMENTS = Path(__file__).resolve().parents[1] / "conf" / "experiment"


def check_results_dir(results_dir: str) -> None:
    """Exit 2 naming `results_dir` when a folder cannot be made there or cannot take a file."""
    error = unwritable(Path(results_dir), results_dir)
    if error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2)


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.planned: list[PlannedJob] | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_results_dir(str(config.results_dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_results_dir(str(config.results_dir))
        # inherited by the launcher's worker processes, which then exit when this process dies
        os.environ[SWEEP_PARENT_ENV] = f"{os.getpid()}@{platform.node()}"
        self.planned = plan(config)
        bad = [p for p in self.planned or [] if p.error]
        for entry in bad:
            print(f"error: job [{entry.label}]: {entry.error}", file=sys.stderr, flush=True)
        if bad and len(bad) == len(self.planned):  # launching them would only print each error again
            print("[mustafar] no job of the sweep has a valid config (above): nothing runs", file=sys.stderr)
            raise SystemExit(1)
        if bad:
            print(
                f"[mustafar] {len(bad)} of {len(self.planned)} jobs have a bad config (above); the other "
                f"{len(self.planned) - len(bad)} run",
                file=sys.stderr,
                flush=True,
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Hydra turns a callback's exception into a warning and exits 0; a broken summary must not, so every
        failure here ends the process with a non-zero status (SystemExit is not caught)."""
        try:
            missing = self._summarise(config)
        except Exception:
            traceback.print_exc()
            raise SystemExit(1) from None
        if missing:
            raise SystemExit(1)

    def _summarise(self, config: DictConfig) -> int:
        missing = unfinished(self.planned) if self.planned is not None else []
        # the folders this multirun's jobs write to: several when `sweep` or `results_dir` is swept (each gets its
        # own table); the config's own folder when no job could be planned
        planned = [e.job.dir.parent for e in self.planned or [] if e.job is not None]
        folders = list(dict.fromkeys(planned)) or [Path(config.results_dir) / config.sweep]
        for i, sweep_dir in enumerate(folders):
            mine = [u for u in missing if u.folder == sweep_dir or (u.folder is None and i == 0)]
            if not sweep_dir.is_dir() and not mine:
                continue
            table = write_summary(sweep_dir) if sweep_dir.is_dir() else None
            text = render(table) if table is not None else "(no finished jobs)"
            print(f"\n== {sweep_dir.name}: {sweep_dir}/summary.md ==\n{text}\n", flush=True)
            report_unfinished(sweep_dir, text, mine)
            self._report(config, table, sweep_dir, mine)
        return len(missing)

    def _report(
        self, config: DictConfig, table: pd.DataFrame | None, sweep_dir: Path, missing: list[Unfinished]
    ) -> None:
        if table is None:
            return
        experiment = OmegaConf.select(config, "hydra.runtime.choices.experiment") or sweep_dir.name
        logger = OmegaConf.to_container(config.logger, resolve=True)
        from eval.report.wandb_summary import enabled, log_summary

        if table.empty or not ((EXPERIMENTS / f"{experiment}.yaml").exists() or enabled(logger)):
            return
        from eval.report.make_tables import make_tables

        report = make_tables(sweep_dir.parent, sweep_dir.name, experiment=experiment)
        print(f"== report: {len(report.files)} files in {report.out_dir}", flush=True)
        if not enabled(logger):
            return
        # the summary run: summary.md's table and its jobs without a result (a failed job has no run of its own),
        # then the report's tables and plots
        unfinished_table = pd.DataFrame(
            [(u.label, u.state, u.detail) for u in missing], columns=["job", "state", "detail"]
        )
        tables = {"summary": table, "unfinished": unfinished_table, **report.tables}
        images = [p for p in report.files if p.suffix == ".png"]
        try:
            wandb_dir = log_summary(logger, sweep_dir.parent, sweep_dir.name, tables, images)
        except Exception as err:  # the tables are on disk: a W&B failure is a warning, as for a job's run
            first = (str(err).splitlines() or [""])[0]
            warn(
                f"{sweep_dir.name}: W&B summary run failed ({err.__class__.__name__}: {first}); the tables are "
                f"saved in {sweep_dir}/summary.md and {report.out_dir}; log them later with `python "
                f"scripts/make_tables.py {sweep_dir.name} --results {sweep_dir.parent} --wandb "
                f"{logger.get('mode', 'offline')}`"
            )
            return
        print(f"== W&B summary run: {wandb_dir}", flush=True)
