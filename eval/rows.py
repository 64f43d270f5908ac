"""The result-row schema: what a job writes into result.json["rows"] and every table, report and W&B log reads.

One row per task score (`kind="task"`) and per summary column (`kind="summary"`, see eval.averages), each carrying
the job's full identity so that rows of different jobs are never confused. Task rows keep their per-sample scores
(`samples`, in sample order, on the score's scale) so confidence intervals and paired tests can be computed later.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, Union

import pandas as pd

from eval import averages, stats
from eval.common import Score
from eval.results import SCHEMA_VERSION

NOT_IDENTITY = ("batch_size",)  # benchmark keys that change speed, never results: no part of a job's identity
SCHEMA = SCHEMA_VERSION  # result.json["schema"]; 2: ResultRow (per-sample scores, CIs, benchmark config, samples_id)


@dataclass
class ResultRow:
    # the job
    run_id: str
    sweep: str
    samples_id: str  # hash of the job identity without the KV policy: equal ids saw the same prompts
    git_sha: str | None
    seed: int
    timestamp: str
    device: str
    host: str
    job_seconds: float
    versions: dict[str, str | None]
    # the model (LoadedModel.describe)
    model: str
    model_source: str
    model_path: str | None
    dtype: str
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    context_length: int
    max_length: int  # prompt token budget
    # the KV policy (KVConfig) and its display label
    k_sparsity: float
    v_sparsity: float
    k_direction: str
    v_direction: str
    k_scorer: str
    v_scorer: str
    window: int
    keep_rule: str
    mode: str
    policy: str
    # the benchmark
    benchmark: str
    benchmark_length: int | None
    benchmark_config: dict[str, Any]
    # measured over the job (GenerationStats.measured)
    k_sparsity_measured: float
    v_sparsity_measured: float
    kv_bytes: int | None
    kv_payload_bytes: int | None
    dense_kv_bytes: int
    prompt_tokens: int
    new_tokens: int
    generation_seconds: float
    # the score
    kind: str  # "task" or "summary"
    task: str  # task name, or the summary column (eval.averages)
    metric: str
    value: float
    n: int  # samples behind the value (a summary: the fewest of its tasks)
    ci_low: float | None  # 95% percentile-bootstrap CI (eval.stats); None when it cannot be computed
    ci_high: float | None
    samples: list[float] | None = None  # task rows: per-sample scores in sample order
    pruning_inactive: bool = False  # a pruned policy measured 0 sparsity (window covers every sequence)
    # KVConfig fields added later (left out of rows, like job ids, at their default)
    k_layer_sparsity: list[float] | None = None
    v_layer_sparsity: list[float] | None = None
    allocation: str = "uniform"
    # token eviction (KVConfig fields after `mode`; absent from rows of policies that do not evict)
    evict: str = "none"
    token_budget: int = 0
    evict_window: int = 32
    evict_pool: int = 7
    value_dtype: str = "native"  # kv.value_dtype (fp8: stored values as e4m3 + a per-token scale)
    k_keep_rule: str = ""  # kv.k_keep_rule / kv.v_keep_rule: a side's own keep rule ("": keep_rule)
    v_keep_rule: str = ""
    kv_evicted_bytes: int = 0  # dense bytes of the evicted prompt tokens (not in kv_bytes nor dense_kv_bytes)
    # K / V entries the pruning rule judged (kept or dropped), summed over samples, layers and heads: with
    # dense_kv_bytes they price a job's cache at its measured counts (scripts/eviction_table.py); None in older rows
    k_judged: int | None = None
    v_judged: int | None = None
    model_arch: str | None = None  # the decoder's family (model.arch names); None in older rows
    # the job's model config (its identity's `model`): the knobs no other column holds (chat_template, seed,
    # tokenizer, a random model's sizes) tell jobs apart in tables as `model.<key>`; None in older rows
    model_config: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"result row has unknown field(s) {unknown} (schema {SCHEMA})")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = [f.name for f in fields(ResultRow)]


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the annotated type (ints pass as floats; bools are neither; floats finite)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)


_HINTS = typing.get_type_hints(ResultRow)
# what a table needs of every row: whose it is and its score (rows of older code lack later fields; those
# present are type-checked)
REQUIRED = ("run_id", "kind", "task", "metric", "value", "n")


def row_problem(row: dict[str, Any]) -> str | None:
    """What keeps a stored row from being a `ResultRow` tables can read (None: nothing): a field it lacks, one no
    row has, or a value of the wrong type (a score "abc" or NaN made tables crash or print a CI without a mean)."""
    missing = [name for name in REQUIRED if name not in row]
    if missing:
        return f"lacks the field(s) {missing}"
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        return f"has fields no result row has: {unknown}"
    bad = next((name for name, value in row.items() if not _fits(value, _HINTS[name])), None)
    if bad is not None:
        return f"has {bad}={row[bad]!r}, not of type {_HINTS[bad]}"
    return None


def row_key(row: dict[str, Any]) -> tuple[Any, Any, str]:
    """What tables tell a job's rows apart by: kind, task (or summary column) and LongBench-E length bucket (the
    metric after "@"). The metric's name is not part of it (a task has one), so two overall rows of one task under
    two metric names are the same score twice."""
    return row["kind"], row["task"], str(row["metric"]).partition("@")[2]


def frame(rows: pd.DataFrame | list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame with every ResultRow column present (missing ones, e.g. from older files, as None)."""
    df = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in df:
            df[column] = None
    return df


def benchmark_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`benchmark.<key>` columns flattened out of benchmark_config (lists as comma-joined text)."""
    configs = [c if isinstance(c, dict) else {} for c in df["benchmark_config"]]
    keys = list(dict.fromkeys(k for c in configs for k in c if k != "name"))
    out = pd.DataFrame(index=df.index)
    for key in keys:
        out[f"benchmark.{key}"] = [_text(c.get(key)) for c in configs]
    return out


# model config keys other columns already show (model, model_path, dtype)
SHOWN_MODEL_KEYS = ("name", "path", "dtype", "source", "gguf_file", "gguf_package", "max_length", "arch")


def model_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`model.<key>` columns flattened out of model_config (nested dicts as `model.<key>.<sub>`), but for the keys
    other columns show."""
    configs = [_flat(c) if isinstance(c, dict) else None for c in df["model_config"]]
    keys = list(dict.fromkeys(k for c in configs if c for k in c if k not in SHOWN_MODEL_KEYS))
    out = pd.DataFrame(index=df.index)
    for key in keys:  # a key a recorded config lacks is "" (unset); a row recording none (older) is None
        out[f"model.{key}"] = [None if c is None else _or_blank(_text(c.get(key))) for c in configs]
    return out


def _or_blank(value: Any) -> Any:
    return "" if value is None else value


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _text(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def score_rows(job: dict[str, Any], benchmark: str, scores: list[Score]) -> list[ResultRow]:
    """A job's rows: one per Score (with its per-sample values and CI), then one per summary column of the
    overall task scores (eval.averages), its CI from resampling within each task."""
    rows = []
    for s in scores:
        ci = stats.bootstrap_ci({s.task: s.samples}) if s.samples else (None, None)
        rows.append(
            ResultRow(
                **job,
                kind="task",
                task=s.task,
                metric=s.metric,
                value=s.value,
                n=s.n,
                ci_low=ci[0],
                ci_high=ci[1],
                samples=list(s.samples),
            )
        )
    overall = {s.task: s for s in scores if "@" not in s.metric}
    values = averages.summarize(benchmark, {t: s.value for t, s in overall.items()})
    for column, weights in averages.weights(benchmark, overall).items():
        have_samples = all(overall[t].samples for t in weights)
        ci = (
            stats.bootstrap_ci({t: overall[t].samples for t in weights}, weights)
            if have_samples
            else (None, None)
        )
        rows.append(
            ResultRow(
                **job,
                kind="summary",
                task=column,
                metric="mean",
                value=values[column],
                n=min(overall[t].n for t in weights),
                ci_low=ci[0],
                ci_high=ci[1],
            )
        )
    return rows
