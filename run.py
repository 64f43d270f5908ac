"""Entry point: `python run.py [overrides] [-m]`. See README.md and conf/."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from eval.job import Job
    from eval.tables import render, write_summary
    from mustafar.config import ConfigError
    from mustafar.models import ModelUnavailable

    try:
        job = Job.from_config(OmegaConf.to_container(cfg, resolve=True))
        job.run()
    except (ConfigError, ValueError, ModelUnavailable, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.get().mode.name == "RUN":  # a multirun prints its table once, at the end (SweepSummary)
        # every job of the sweep folder, one line each; `*` marks this run's job (earlier jobs stay visible apart)
        table = write_summary(Path(cfg.results_dir) / cfg.sweep)
        print(
            f"\n== {cfg.sweep}: {Path(cfg.results_dir) / cfg.sweep}/summary.md ==\n{render(table, job.job_id)}"
        )


if __name__ == "__main__":
    main()
