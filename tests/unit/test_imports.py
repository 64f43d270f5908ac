"""The library's import structure: no circle between mustafar modules (function-level imports included), every
module imports on its own in a fresh interpreter, and the data layer (formats/) never reaches the kernels."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "mustafar").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """mustafar modules ``name`` imports anywhere in its body (``from pkg import sub`` counts as ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names} & modules.keys()
            found |= subs if subs and len(subs) == len(node.names) else {base} | subs
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node) :] + [node]))
        if node in done:
            return
        for dep in sorted(graph[node]):
            visit(dep, stack + [node])
        done.add(node)

    for name in graph:
        visit(name, [])


def test_every_module_imports_alone_and_formats_stay_data():
    """One fresh interpreter preloads third-party packages (whichever are installed), then forks a child per
    mustafar module: each child starts with no mustafar module loaded and imports exactly one."""
    names = sorted(_modules())
    script = textwrap.dedent(
        f"""
        import importlib, os, sys, traceback
        import torch, transformers, triton  # noqa: F401  third-party only: the children share it
        for heavy in (
            "transformers.cache_utils",
            "transformers.integrations.sdpa_attention",
            "transformers.masking_utils",
            "pandas",
            "matplotlib.pyplot",
            "hydra",
            "wandb",
        ):
            try:
                importlib.import_module(heavy)
            except ImportError:
                pass
        sys.path.insert(0, {str(ROOT)!r})
        failed = []
        for name in {names!r}:
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    importlib.import_module(name)
                    if name.startswith("mustafar.formats"):
                        leaked = sorted(m for m in sys.modules if m.startswith("mustafar.kernels"))
                        if leaked:
                            print(name, "imports", leaked)
                            code = 2
                except BaseException:
                    traceback.print_exc()
                    code = 1
                sys.stdout.flush()
                os._exit(code)
            if os.waitpid(pid, 0)[1]:
                failed.append(name)
        print("FAILED", failed)
        sys.exit(1 if failed else 0)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
