"""Config-group choices (`model=`, `kv=`, ...) and group keys (`kv.`, `model.`, `benchmark.`, `logger.`) checked
before Hydra composes the config: an unknown name is one error line naming the allowed ones, where Hydra prints a
multi-line listing and exits 1."""

from __future__ import annotations

from pathlib import Path

import yaml

GROUPS = ("model", "kv", "benchmark", "logger", "experiment")


def _fields(group: str) -> list[str]:
    """The keys of a dataclass-backed group (kv: KVConfig, model: ModelConfig)."""
    from dataclasses import fields

    if group == "kv":
        from mustafar.config import KVConfig as cls
    else:
        from mustafar.models import ModelConfig as cls
    return sorted(f.name for f in fields(cls) if not f.name.startswith("_"))


def _keys(group: str, args: list[str], conf_dir: Path) -> list[str]:
    """The keys of `group` as the command line chooses it: a dataclass's fields (kv, model), or what the chosen
    benchmark or logger reads (every chosen one of a sweep such as `benchmark=ruler,longbench`)."""
    if group in ("kv", "model"):
        return _fields(group)
    from eval.registry import KEYS
    from eval.wandb_log import LOGGER_KEYS

    table = KEYS if group == "benchmark" else LOGGER_KEYS
    chosen = next((a.partition("=")[2] for a in args if a.lstrip("+").partition("=")[0] == group), None)
    if chosen is None:
        defaults = yaml.safe_load((conf_dir / "config.yaml").read_text())["defaults"]
        chosen = next(d[group] for d in defaults if isinstance(d, dict) and group in d)
    names = [n for n in chosen.split(",") if n in table] or list(table)
    return sorted({key for name in names for key in table[name]})


def bad_choice(args: list[str], conf_dir: Path) -> str | None:
    """The error for the first command-line override naming a config that does not exist in ``conf_dir``, or a
    `kv.` / `model.` / `benchmark.` / `logger.` key (set without `+`) that the group does not have."""
    for arg in args:
        if not arg.startswith(("+", "~")):
            dotted, eq, _ = arg.partition("=")
            group, dot, key = dotted.partition(".")
            if eq and dot and group in ("kv", "model", "benchmark", "logger"):
                known = _keys(group, args, conf_dir)
                if key.split(".")[0] not in known:
                    return (
                        f"{group}.{key.split('.')[0]} is not a {group} key; choose one of {', '.join(known)}"
                    )
        key, eq, value = arg.lstrip("+~").partition("=")
        if not eq or key not in GROUPS or any(c in value for c in "()${}[]"):  # sweeps like glob(...) pass
            continue
        known = sorted(p.stem for p in (conf_dir / key).glob("*.yaml") if not p.stem.startswith("_"))
        for name in value.split(","):
            if name not in known:
                return f"{key}={name!r} is not a config in conf/{key}/; choose one of {', '.join(known)}"
    return None
