"""W&B logging of one job: config, result rows as a table, summary metrics. Offline unless asked otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WANDB_MODES = ("offline", "online", "disabled")


def validate(cfg: dict[str, Any]) -> None:
    name = cfg.get("name")
    if name not in ("wandb", "none"):
        raise ValueError(f"logger={name!r} is not allowed; choose one of wandb, none")
    if name == "wandb" and cfg.get("mode", "offline") not in WANDB_MODES:
        raise ValueError(
            f"logger.mode={cfg.get('mode')!r} is not allowed; choose one of {', '.join(WANDB_MODES)}"
        )


def log_job(
    cfg: dict[str, Any],
    results_dir: Path,
    group: str,
    name: str,
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    summary: dict[str, float],
) -> None:
    if cfg.get("name") != "wandb" or cfg.get("mode") == "disabled":
        return
    import pandas as pd
    import wandb

    run = wandb.init(
        project=cfg.get("project", "mustafar"),
        entity=cfg.get("entity"),
        mode=cfg.get("mode", "offline"),
        group=group,
        name=name,
        config=config,
        dir=str(results_dir),
        reinit="finish_previous",
    )
    try:
        run.log({"results": wandb.Table(dataframe=pd.DataFrame(rows).astype(str))})
        run.summary.update(summary)
    finally:
        run.finish()
