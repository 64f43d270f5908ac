"""Cheap sweep jobs on the tiny model for the harness tests: one vt sample on the CPU, no logger."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from eval.job import Job

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
FAST = ["model=tiny", "logger=none", "benchmark.tasks=[vt]", "benchmark.n=1", "device=cpu"]


def config(*overrides: str, results_dir: Path | None = None) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=[*FAST, *overrides]), resolve=True)
    if results_dir is not None:
        cfg["results_dir"] = str(results_dir)
    return cfg


def job(*overrides: str, results_dir: Path) -> Job:
    return Job.from_config(config(*overrides, results_dir=results_dir))


def run_py(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """run.py in a subprocess, offline (``env`` adds to or overrides the environment; W&B disabled by default)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        **kwargs,
    )
