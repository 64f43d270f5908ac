"""One W&B summary run per sweep (group = sweep name): the aggregated tables and the plots.

Offline by default, like the per-job runs (`wandb sync results/wandb/offline-run-*` uploads later).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd


def enabled(logger: Mapping[str, Any] | None) -> bool:
    return bool(logger) and logger.get("name") == "wandb" and logger.get("mode", "offline") != "disabled"


def log_summary(
    logger: Mapping[str, Any],
    results_dir: Path,
    sweep: str,
    tables: Mapping[str, pd.DataFrame],
    images: list[Path],
) -> str | None:
    """Log `tables` as wandb.Table and `images` as wandb.Image into run '<sweep>-summary'; returns its dir."""
    if not enabled(logger):
        return None
    import wandb

    run = wandb.init(
        project=logger.get("project", "mustafar"),
        entity=logger.get("entity"),
        mode=logger.get("mode", "offline"),
        group=sweep,
        name=f"{sweep}-summary",
        job_type="summary",
        dir=str(results_dir),
        reinit="finish_previous",
    )
    try:
        payload: dict[str, Any] = {
            name: wandb.Table(dataframe=table.astype(object).where(table.notna(), None))
            for name, table in tables.items()
        }
        payload |= {path.stem: wandb.Image(str(path)) for path in images}
        run.log(payload)
        return str(Path(run.dir).parent)
    finally:
        run.finish()
