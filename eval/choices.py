"""Config-group choices (`model=`, `kv=`, ...) checked before Hydra composes the config: an unknown name is one
error line naming the allowed ones, where Hydra prints a multi-line listing and exits 1."""

from __future__ import annotations

from pathlib import Path

GROUPS = ("model", "kv", "benchmark", "logger", "experiment")


def bad_choice(args: list[str], conf_dir: Path) -> str | None:
    """The error for the first command-line override naming a config that does not exist in ``conf_dir``."""
    for arg in args:
        key, eq, value = arg.lstrip("+~").partition("=")
        if not eq or key not in GROUPS or any(c in value for c in "()${}[]"):  # sweeps like glob(...) pass
            continue
        known = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
        for name in value.split(","):
            if name not in known:
                return f"{key}={name!r} is not a config in conf/{key}/; choose one of {', '.join(known)}"
    return None
