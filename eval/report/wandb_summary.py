"""One W&B summary run per sweep (group = sweep name): the aggregated tables and the plots.

Offline by default, like the per-job runs (`wandb sync results/wandb/offline-run-*` uploads later). The run's id is
fixed by the sweep's results folder and name, so a re-log (make_tables --wandb, the end-of-multirun callback)
resumes that run; offline, each re-log is another offline-run-* folder of the same id, synced into the one run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from eval.wandb_log import stable_run_id


def enabled(logger: Mapping[str, Any] | None) -> bool:
    return bool(logger) and logger.get("name") == "wandb" and logger.get("mode", "offline") != "disabled"


def summary_run_id(results_dir: Path, sweep: str) -> str:
    """The summary run's id: the same for every re-log of one sweep, different for another sweep or results
    folder."""
    return stable_run_id("summary", results_dir, sweep)


def log_summary(
    logger: Mapping[str, Any],
    results_dir: Path,
    sweep: str,
    tables: Mapping[str, pd.DataFrame],
    images: list[Path],
) -> str | None:
    """Log `tables` as wandb.Table and `images` as wandb.Image into the sweep's run '<sweep>-summary' (resumed when
    it exists); returns its dir."""
    if not enabled(logger):
        return None
    import wandb

    run = wandb.init(
        project=logger.get("project", "mustafar"),
        entity=logger.get("entity"),
        mode=logger.get("mode", "offline"),
        group=sweep,
        name=f"{sweep}-summary",
        id=summary_run_id(results_dir, sweep),
        resume="allow",
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
