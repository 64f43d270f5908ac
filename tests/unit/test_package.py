"""Package boundaries: the wheel holds the library only, and the library never imports the harness."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ("eval", "hydra", "omegaconf", "wandb")


def test_library_imports_without_the_harness(tmp_path):
    """Every mustafar module, imported from an unrelated directory, pulls in no Hydra, W&B or eval/."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import mustafar\n"
        "for m in pkgutil.walk_packages(mustafar.__path__, 'mustafar.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {HARNESS!r})\n"
        "print(' '.join(bad) or 'clean')\n"
        "print(mustafar.__all__)\n"
    )
    env = {"PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "clean"
    assert "prune" in proc.stdout.splitlines()[1]


@pytest.mark.slow
def test_wheel_installs_the_library_only(tmp_path):
    """`pip install .` must not put a top-level `eval` package (or anything but mustafar) into site-packages."""
    src = tmp_path / "src"  # a copy of what the sdist holds, so the build leaves nothing in the checkout
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns(".git", "results", "__pycache__", "*.egg-info", "build")
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path,
            src,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("mustafar-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mustafar"}
