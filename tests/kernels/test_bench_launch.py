"""The launch benchmark's CPU-checkable part: it imports without the harness's dependencies (the GPU machine has
only torch, triton and transformers) and refuses to run without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

BLOCKED = ("pandas", "hydra", "omegaconf", "wandb")
RUN = (
    "import runpy, sys\n"
    f"for m in {BLOCKED!r}: sys.modules[m] = None  # import fails as if not installed\n"
    "sys.argv = ['bench_launch.py', '--out', sys.argv[1]]\n"
    "runpy.run_path(sys.argv[0].replace('bench_launch.py', {path!r}), run_name='__main__')\n"
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_imports_light_and_refuses_on_cpu(tmp_path):
    script = RUN.format(path=str(ROOT / "scripts" / "bench_launch.py"))
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().endswith("bench_launch.py needs a CUDA GPU")


def test_unknown_keep_rule_is_named():
    script = RUN.format(path=str(ROOT / "scripts" / "bench_launch.py")).replace(
        "'--out', sys.argv[1]]", "'--out', sys.argv[1], '--keep-rules', 'word,wrod']"
    )
    proc = subprocess.run([sys.executable, "-c", script, "/nonexistent"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "unknown rule(s) ['wrod']" in proc.stderr
