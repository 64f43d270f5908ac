"""At the end of a multirun: print the sweep's table, write the paper-style report, log a W&B summary run.

The report (results/<sweep>/report/: paper-layout tables and plots) is built for sweeps that are experiments
(conf/experiment/<sweep>.yaml, or the `+experiment=` choice) and whenever the W&B logger is on, so that the sweep's
W&B group gets its summary run (tables + plots) next to the per-job runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from eval.tables import render, write_summary

EXPERIMENTS = Path(__file__).resolve().parents[1] / "conf" / "experiment"


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.results_dir) / config.sweep
        if not sweep_dir.is_dir():
            return
        table = write_summary(sweep_dir)
        print(f"\n== {config.sweep}: {sweep_dir}/summary.md ==\n{render(table)}\n", flush=True)
        experiment = OmegaConf.select(config, "hydra.runtime.choices.experiment") or config.sweep
        logger = OmegaConf.to_container(config.logger, resolve=True)
        from eval.report.wandb_summary import enabled

        if table.empty or not ((EXPERIMENTS / f"{experiment}.yaml").exists() or enabled(logger)):
            return
        from eval.report.make_tables import make_tables

        report = make_tables(Path(config.results_dir), config.sweep, experiment=experiment, logger=logger)
        print(f"== report: {len(report.files)} files in {report.out_dir}", flush=True)
        if report.wandb_dir:
            print(f"== W&B summary run: {report.wandb_dir}", flush=True)
