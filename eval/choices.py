"""Config-group choices (`model=`, `kv=`, ...) and `kv.` / `model.` keys checked before Hydra composes the config:
an unknown name is one error line naming the allowed ones, where Hydra prints a multi-line listing and exits 1."""

from __future__ import annotations

from pathlib import Path

GROUPS = ("model", "kv", "benchmark", "logger", "experiment")


def _fields(group: str) -> list[str]:
    """The keys of a dataclass-backed group (kv: KVConfig, model: ModelConfig)."""
    from dataclasses import fields

    if group == "kv":
        from mustafar.config import KVConfig as cls
    else:
        from mustafar.models import ModelConfig as cls
    return sorted(f.name for f in fields(cls) if not f.name.startswith("_"))


def bad_choice(args: list[str], conf_dir: Path) -> str | None:
    """The error for the first command-line override naming a config that does not exist in ``conf_dir``, or a
    `kv.` / `model.` key (set without `+`) that the group does not have."""
    for arg in args:
        if not arg.startswith(("+", "~")):
            dotted, eq, _ = arg.partition("=")
            group, dot, key = dotted.partition(".")
            if eq and dot and group in ("kv", "model"):
                known = _fields(group)
                if key.split(".")[0] not in known:
                    return (
                        f"{group}.{key.split('.')[0]} is not a {group} key; choose one of {', '.join(known)}"
                    )
        key, eq, value = arg.lstrip("+~").partition("=")
        if not eq or key not in GROUPS or any(c in value for c in "()${}[]"):  # sweeps like glob(...) pass
            continue
        known = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
        for name in value.split(","):
            if name not in known:
                return f"{key}={name!r} is not a config in conf/{key}/; choose one of {', '.join(known)}"
    return None
