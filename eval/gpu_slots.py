"""One GPU per worker in local parallel sweeps (`hydra/launcher=joblib`).

A joblib worker is a long-lived process that runs jobs one after another. At its first job it claims the lowest
free worker slot (an exclusive lock on a file under the sweep folder, held until the process exits, so a crashed
worker frees its slot) and restricts itself to that slot's GPU with CUDA_VISIBLE_DEVICES, before anything
initialises CUDA. With n_jobs at most the number of visible GPUs (the default) no two jobs share a device; asking
for more jobs than GPUs shares them round-robin.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

RESOLVER = "mustafar_gpu_jobs"
N_JOBS_ENV = "MUSTAFAR_SWEEP_N_JOBS"


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries, without initialising CUDA here (a
    process that has initialised CUDA can no longer narrow its devices)."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listing.returncode != 0:
        return []
    return [
        str(i) for i, line in enumerate(ln for ln in listing.stdout.splitlines() if ln.startswith("GPU "))
    ]


def default_n_jobs(cpu_fallback: int) -> int:
    """hydra.launcher.n_jobs when not given: one job per visible GPU, or `cpu_fallback` on a host without one.

    Counted once, in the launching process, and handed to the workers through the environment: a pinned worker
    sees one GPU and would count 1."""
    if N_JOBS_ENV not in os.environ:
        os.environ[N_JOBS_ENV] = str(len(visible_gpus()) or int(cpu_fallback))
    return int(os.environ[N_JOBS_ENV])


@dataclass
class Slot:
    index: int
    lock: IO[str]  # open while the process lives: the flock is the claim


def claim_slot(lock_dir: Path, slots: int) -> Slot:
    """Lock the lowest free of `slots` slot files under `lock_dir` (non-blocking)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(slots):
        handle = open(lock_dir / f"slot{index}.lock", "w")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return Slot(index, handle)
    raise RuntimeError(
        f"all {slots} worker slots under {lock_dir} are taken: more workers than n_jobs={slots}"
    )


def worker_count(n_jobs: Any) -> int:
    """joblib's reading of n_jobs: negative counts back from the CPU count (-1: one per core)."""
    from joblib import effective_n_jobs

    return effective_n_jobs(n_jobs)


_CLAIMED: tuple[Slot, str] | None = None  # this process's slot and GPU


class GpuPerWorker(Callback):
    """Pins each joblib worker process to one GPU at its first job (module docstring)."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _CLAIMED
        if _CLAIMED is None:
            gpus = visible_gpus()
            if not gpus:
                return
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_initialized():
                raise RuntimeError(
                    "CUDA was initialised before the worker chose its GPU; cannot pin the worker"
                )
            slots = worker_count(config.hydra.launcher.n_jobs)
            slot = claim_slot(Path(config.hydra.sweep.dir) / ".gpu_slots", slots)
            _CLAIMED = slot, gpus[slot.index % len(gpus)]
            os.environ["CUDA_VISIBLE_DEVICES"] = _CLAIMED[1]
        slot, gpu = _CLAIMED
        print(f"[mustafar] job {config.hydra.job.num} on GPU {gpu} (worker slot {slot.index})", flush=True)


if not OmegaConf.has_resolver(
    RESOLVER
):  # importing the callback (Hydra does, first) provides the n_jobs default
    OmegaConf.register_new_resolver(RESOLVER, default_n_jobs)
