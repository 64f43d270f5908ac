"""W&B logging of one job: config, result rows as a table, summary metrics. Offline unless asked otherwise."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from eval.rows import ResultRow

WANDB_MODES = ("offline", "online", "disabled")
# a job's measurements (ResultRow fields, equal in all its rows) in its run summary beside the scores
MEASURED = (
    "k_sparsity_measured",
    "v_sparsity_measured",
    "kv_bytes",
    "kv_payload_bytes",
    "dense_kv_bytes",
    "kv_evicted_bytes",
    "k_judged",
    "v_judged",
    "prompt_tokens",
    "new_tokens",
    "generation_seconds",
    "job_seconds",
)


# the keys each logger reads (conf/logger/<name>.yaml)
LOGGER_KEYS = {"wandb": ("name", "mode", "project", "entity"), "none": ("name",)}


def validate(cfg: dict[str, Any]) -> None:
    name = cfg.get("name")
    if name not in ("wandb", "none"):
        raise ValueError(f"logger={name!r} is not allowed; choose one of wandb, none")
    keys = LOGGER_KEYS[name]
    unknown = sorted(set(cfg) - set(keys))
    if unknown:
        raise ValueError(f"logger.{unknown[0]} is not a key of logger={name}; its keys are {', '.join(keys)}")
    if name == "wandb" and cfg.get("mode", "offline") not in WANDB_MODES:
        raise ValueError(
            f"logger.mode={cfg.get('mode')!r} is not allowed; choose one of {', '.join(WANDB_MODES)}"
        )


def table_frame(rows: list[ResultRow]) -> pd.DataFrame:
    """The rows as W&B shows them: one line per score with its n and 95% CI; per-sample lists stay in result.json."""
    return pd.DataFrame([r.to_dict() for r in rows]).drop(columns=["samples"])


def job_metrics(rows: list[ResultRow]) -> dict[str, Any]:
    """The run summary of a job: every row's score as {task or summary column: value, .../ci_low, .../ci_high,
    .../n} (a length bucket's row as `<task>@<bucket>`), then the job's measured sparsity and bytes (None where
    the rows hold None, so every job has the same keys)."""
    out: dict[str, Any] = {}
    for r in rows:
        key = r.task if "@" not in r.metric else f"{r.task}@{r.metric.partition('@')[2]}"
        out |= {key: r.value, f"{key}/ci_low": r.ci_low, f"{key}/ci_high": r.ci_high, f"{key}/n": r.n}
    if rows:
        out |= {name: getattr(rows[0], name) for name in MEASURED}
    return out


def run_config(identity: dict[str, Any], rows: list[ResultRow]) -> dict[str, Any]:
    """The job's identity with every kv knob, also those left out of the job id at their default (a dashboard
    filter or grouping on value_dtype, evict, a keep rule... must see every job), and the seed."""
    from mustafar.config import KVConfig

    kv = asdict(KVConfig.from_mapping(identity["kv"]))
    kv = {k: list(v) if isinstance(v, tuple) else v for k, v in kv.items()}
    return {**identity, "kv": kv, "seed": identity.get("seed", rows[0].seed if rows else None)}


def stable_run_id(kind: str, results_dir: Path, *names: str) -> str:
    """A W&B run id fixed by the results folder and ``names`` (W&B ids allow no '/', so a digest): every re-log
    of the same run resumes it, another folder or name gets another run."""
    digest = hashlib.sha256("\0".join([str(Path(results_dir).resolve()), *names]).encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


def run_id(results_dir: Path, sweep: str, job_id: str) -> str:
    """A job's W&B run id: the same for every attempt of the job in one results folder, so a redo (force=true)
    resumes the job's run instead of adding a second run of the same name to the group."""
    return stable_run_id("job", results_dir, sweep, job_id)


def _cell(value: Any) -> Any:
    """A table cell as result.json holds it: numbers stay numbers, None stays None, a list or dict is JSON."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


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
        id=run_id(results_dir, group, name),
        resume="allow",
        job_type="job",
        config=run_config(config, rows),
        dir=str(results_dir),
        reinit="finish_previous",
    )
    try:
        table = table_frame(rows)
        table = pd.DataFrame({c: [_cell(v) for v in table[c]] for c in table.columns}, dtype=object)
        run.log({"results": wandb.Table(dataframe=table)})
        run.summary.update(job_metrics(rows))
    except BaseException:
        run.finish(exit_code=1)  # a half-logged run must not look finished
        raise
    run.finish()
