"""W&B logging of one job: config, result rows as a table, summary metrics. Offline unless asked otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from eval.rows import ResultRow

WANDB_MODES = ("offline", "online", "disabled")


def validate(cfg: dict[str, Any]) -> None:
    name = cfg.get("name")
    if name not in ("wandb", "none"):
        raise ValueError(f"logger={name!r} is not allowed; choose one of wandb, none")
    if name == "wandb" and cfg.get("mode", "offline") not in WANDB_MODES:
        raise ValueError(
            f"logger.mode={cfg.get('mode')!r} is not allowed; choose one of {', '.join(WANDB_MODES)}"
        )


def table_frame(rows: list[ResultRow]) -> pd.DataFrame:
    """The rows as W&B shows them: one line per score with its n and 95% CI; per-sample lists stay in result.json."""
    return pd.DataFrame([r.to_dict() for r in rows]).drop(columns=["samples"])


def summary_metrics(rows: list[ResultRow]) -> dict[str, float | None]:
    """{column: value, column/ci_low, column/ci_high, column/n} of the summary rows (eval.averages)."""
    out: dict[str, float | None] = {}
    for r in rows:
        if r.kind == "summary":
            out |= {
                r.task: r.value,
                f"{r.task}/ci_low": r.ci_low,
                f"{r.task}/ci_high": r.ci_high,
                f"{r.task}/n": r.n,
            }
    return out


def log_job(
    cfg: dict[str, Any],
    results_dir: Path,
    group: str,
    name: str,
    config: dict[str, Any],
    rows: list[ResultRow],
) -> None:
    if cfg.get("name") != "wandb" or cfg.get("mode") == "disabled":
        return
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
        run.log({"results": wandb.Table(dataframe=table_frame(rows).astype(str))})
        run.summary.update(summary_metrics(rows))
    finally:
        run.finish()
