"""The GPU test files run only on a GPU, and their imports sit inside test bodies: a name moved between modules
fails every such test there and nowhere else (round 23's first full GPU run: 48 failures of one test from one
moved import). Here every ``from mustafar... import`` in them must resolve on the CPU."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

GPU_TESTS = sorted((Path(__file__).resolve().parents[1] / "kernels").glob("test_gpu*.py"))


@pytest.mark.parametrize("path", GPU_TESTS, ids=lambda p: p.name)
def test_gpu_test_imports_resolve(path):
    assert GPU_TESTS, "no GPU test files found"
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mustafar"):
            module = importlib.import_module(node.module)
            missing += [
                f"{node.module}.{a.name} (line {node.lineno})"
                for a in node.names
                if not hasattr(module, a.name)
            ]
    assert not missing, f"{path.name} imports names that do not exist: {missing}"
