"""Print the sweep's table once every job of a multirun is done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mustafar.tables import render, write_summary


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.results_dir) / config.sweep
        if sweep_dir.is_dir():
            table = write_summary(sweep_dir)
            print(f"\n== {config.sweep}: {sweep_dir}/summary.md ==\n{render(table)}\n", flush=True)
