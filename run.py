"""Entry point: `python run.py [overrides] [-m]`. See README.md and conf/."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from eval.sweep import run_job
    from eval.tables import render, write_summary

    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    code, job_id = run_job(OmegaConf.to_container(cfg, resolve=True), multirun)
    if multirun:  # a failed job is listed at the end (SweepSummary), which also prints the table once
        return
    if code:
        sys.exit(code)
    # every job of the sweep folder, one line each; `*` marks this run's job (earlier jobs stay visible apart)
    table = write_summary(Path(cfg.results_dir) / cfg.sweep)
    print(f"\n== {cfg.sweep}: {Path(cfg.results_dir) / cfg.sweep}/summary.md ==\n{render(table, job_id)}")


if __name__ == "__main__":
    from eval.choices import bad_choice

    error = bad_choice(sys.argv[1:], Path(__file__).resolve().parent / "conf")
    if error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
