"""GPU-aware joblib sweeps: which GPUs a process sees, worker slots, and a real multirun where two workers
each own one (fake) GPU. No GPU is needed: the pinning only sets CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eval.gpu_slots import claim_slot, visible_gpus

ROOT = Path(__file__).resolve().parents[2]


def test_visible_gpus_reads_cuda_visible_devices():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_slots_are_exclusive_until_their_holder_lets_go(tmp_path):
    first, second = claim_slot(tmp_path, 2), claim_slot(tmp_path, 2)
    assert (first.index, second.index) == (0, 1)
    with pytest.raises(RuntimeError, match="all 2 worker slots .* are taken"):
        claim_slot(tmp_path, 2)
    first.lock.close()  # what a worker's exit does
    assert claim_slot(tmp_path, 2).index == 0


TASK = """
import os, time
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(config_path={conf!r}, config_name="config", version_base="1.3")
def main(cfg):
    # each job records itself in a file: a loky worker's stdout reached the test only sometimes (a full-suite run
    # saw one of four jobs' lines while all four ran)
    jobs = os.path.join(cfg.results_dir, "jobs")
    os.makedirs(jobs, exist_ok=True)
    with open(os.path.join(jobs, str(HydraConfig.get().job.num)), "w") as f:
        f.write("%d %s" % (os.getpid(), os.environ["CUDA_VISIBLE_DEVICES"]))
    started = os.path.join(cfg.results_dir, "started")  # a barrier: both workers must be running jobs
    os.makedirs(started, exist_ok=True)
    open(os.path.join(started, str(os.getpid())), "w").close()
    deadline = time.time() + 120
    while len(os.listdir(started)) < 2 and time.time() < deadline:
        time.sleep(0.1)

main()
"""


@pytest.mark.slow
def test_joblib_sweep_gives_each_worker_its_own_gpu(tmp_path):
    script = tmp_path / "task.py"
    script.write_text(textwrap.dedent(TASK.format(conf=str(ROOT / "conf"))))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5", "PYTHONPATH": str(ROOT)}
    env.pop("MUSTAFAR_SWEEP_N_JOBS", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "-m",
            "hydra/launcher=joblib",
            "seed=1,2,3,4",
            f"results_dir={tmp_path}",
            "~hydra.callbacks.sweep_summary",  # the stand-in jobs write no results for the summary to list
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2," in proc.stderr + proc.stdout  # the default: one job per visible GPU
    records = {int(f.name): f.read_text().split() for f in (tmp_path / "jobs").iterdir()}
    assert sorted(records) == [0, 1, 2, 3]
    gpu_of = {}
    for pid, gpu in records.values():
        assert gpu_of.setdefault(pid, gpu) == gpu  # a worker keeps its GPU from job to job
    assert sorted(gpu_of.values()) == ["3", "5"]  # two workers, one GPU each
