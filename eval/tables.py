"""A sweep's result rows -> the tables a person reads (summary.md / summary.csv, and the table run.py prints).

Never collapses jobs: every job (run_id) is its own line. A field of the setting a job ran in, outside its KV policy
(e.g. `device`, `dtype`, `seed`, `benchmark.n`, `model.chat_template`), gets a column whenever two jobs
of a table differ in it; a policy field the label does not name (e.g. `window` of a dense job) when two jobs sharing
a display label (model, policy) differ in it; `run_id` when nothing shown tells them apart. Each benchmark (RULER at
each length, LongBench) gets its own table.

Every score cell is `mean [95% CI]` (eval.stats, bootstrap over samples), `n` is the samples per task, and
`Δ avg vs dense` is the paired difference to the dense job that saw the same prompts (same `samples_id`), with its
paired-bootstrap CI, marked "≈" (within noise) when that CI covers 0 or the sign-flip p-value is >= 0.05
(eval.stats.Paired.within_noise).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from pathlib import Path

import pandas as pd

from eval import stats
from eval.averages import weights
from eval.results import atomic_write_text, load_rows, warn
from eval.rows import NOT_IDENTITY, ResultRow, benchmark_columns, frame, model_columns

POLICY_ORDER = ("k_sparsity", "v_sparsity", "k_scorer", "v_scorer", "k_direction", "v_direction")
# the setting a job ran in, outside its KV policy (no label names it): shown whenever it differs between any two
# jobs of a table, as are the `model.*` and `benchmark.*` columns
SETTING_FIELDS = (
    "model_arch", "model_path", "dtype", "device", "layers", "q_heads", "kv_heads", "head_dim", "max_length", "seed",
)  # fmt: skip
# policy fields, which the label names where they matter: shown where jobs sharing a (model, policy) label differ
POLICY_FIELDS = (
    "window", "keep_rule", "k_keep_rule", "v_keep_rule", "k_layer_sparsity", "v_layer_sparsity", "allocation",
    "value_dtype", "evict", "token_budget", "evict_window", "evict_pool", "mode",
)  # fmt: skip
IDENTITY_FIELDS = (*SETTING_FIELDS, *POLICY_FIELDS)  # in display order (model.*, benchmark.* added per table)
# benchmark keys that change speed, never results: they tell no jobs apart
SPEED_ONLY = tuple(f"benchmark.{key}" for key in NOT_IDENTITY)
# the value a row older than a field stands for (the field's default): such a job differs from no new one in it
DEFAULTS = {f.name: f.default for f in fields(ResultRow) if f.default is not MISSING}
HEADLINE = "avg"  # the summary column compared against dense
NOISE_MARK = "≈"


def labels(rows: pd.DataFrame) -> pd.Series:
    """Each row's display label: its policy, marked when it ran compressed."""
    return rows["policy"].where(rows["mode"] != "compressed", rows["policy"] + " [compressed]")


def _bench(rows: pd.DataFrame) -> pd.Series:
    return rows["benchmark"] + rows["benchmark_length"].map(lambda x: f"-{int(x)}" if pd.notna(x) else "")


def jobs_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per job (index run_id): its fields, `benchmark.<key>` columns, display label and bench."""
    rows = frame(rows)
    rows = pd.concat([rows, benchmark_columns(rows), model_columns(rows)], axis=1)
    rows["label"] = labels(rows)
    rows["bench"] = _bench(rows)
    return rows.groupby("run_id", sort=False).first()


def identity_columns(jobs: pd.DataFrame) -> list[str]:
    """The columns of `jobs` that can tell jobs apart: the identity fields, the model config's other knobs and the
    benchmark's keys (not those that change speed only), in display order."""
    model = [c for c in jobs.columns if c.startswith("model.")]
    benchmark = [c for c in jobs.columns if c.startswith("benchmark.") and c not in SPEED_ONLY]
    return [c for c in (*IDENTITY_FIELDS, *model, *benchmark) if c in jobs]


def comparable(values: pd.Series) -> pd.Series:
    """An identity column as text to compare and show: lists readable, a missing value (rows older than the field)
    as the field's default, null as ""."""
    default = DEFAULTS.get(str(values.name))
    return values.map(lambda v: display_text(default if _missing(v) else v))


def display_text(value: object) -> str:
    """An identity value as text ("" for null; a seed 7 stays "7", never the score format "7.00")."""
    return "" if _missing(value) else str(display_value(value))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def identity_values(jobs: pd.DataFrame, column: str) -> pd.Series:
    """An identity column of `jobs` as comparable text; a model knob is NaN where a job's rows record no model
    config (older rows), so it differs from no job in it."""
    if column.startswith("model."):
        return comparable(jobs[column]).where(jobs[column].notna())
    return comparable(jobs[column])


def _setting(column: str) -> bool:
    return column in SETTING_FIELDS or column.startswith(("model.", "benchmark."))


def distinguishing(jobs: pd.DataFrame) -> list[str]:
    """Identity columns shown in a table of `jobs`: a setting (`_setting`: device, dtype, the model config's knobs,
    the benchmark's keys, the task list ...) wherever it differs between two of them, since jobs of other settings
    side by side are no comparison of policies; a policy field where it differs between jobs sharing a (model,
    label); then run_id if needed."""
    shown = []
    for column in identity_columns(jobs):
        values = identity_values(jobs, column)
        within_label = (values.groupby([jobs["model"], jobs["label"]]).nunique() > 1).any()
        if within_label or (_setting(column) and values.nunique() > 1):
            shown.append(column)
    keys = jobs[["model", "label", *shown]].astype(str)
    if keys.duplicated().any():
        shown.append("run_id")
    return shown


def _samples(rows: pd.DataFrame) -> dict[str, list[float]]:
    tasks = rows[(rows["kind"] == "task") & ~rows["metric"].astype(str).str.contains("@", regex=False)]
    return {t: s for t, s in zip(tasks["task"], tasks["samples"]) if isinstance(s, list) and s}


def dense_jobs(jobs: pd.DataFrame) -> pd.Series:
    """Which jobs keep the whole cache: nothing pruned and nothing evicted (a SnapKV-only job prunes nothing but is
    no reference; `evict` is missing from rows written before eviction existed)."""
    evict = jobs["evict"] if "evict" in jobs else pd.Series(None, index=jobs.index)
    return (jobs["k_sparsity"] == 0) & (jobs["v_sparsity"] == 0) & (evict.isna() | (evict == "none"))


def dense_partner(jobs: pd.DataFrame, run_id: str) -> str | None:
    """The dense job (:func:`dense_jobs`) asked the same prompts (mask mode preferred), or None; ``jobs``
    indexed by run_id."""
    job = jobs.loc[run_id]
    if pd.isna(job["samples_id"]):
        return None
    same = jobs[(jobs["samples_id"] == job["samples_id"]) & dense_jobs(jobs)]
    same = same.sort_values("mode", key=lambda m: m != "mask", kind="stable")
    return None if same.empty or run_id in same.index else str(same.index[0])


def summary_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Long format: one line per (job, score column) with value, CI, n and, for `avg`, Δ vs dense."""
    if rows.empty:
        return pd.DataFrame()
    rows = frame(rows)
    jobs = jobs_frame(rows)
    order = jobs.sort_values(
        ["benchmark", "benchmark_length", *POLICY_ORDER, "window", "keep_rule", "mode"], kind="stable"
    ).index
    out = []
    for bench, part in jobs.loc[order].groupby("bench", sort=False):
        extra = distinguishing(part)
        for run_id, job in part.iterrows():
            mine = rows[rows["run_id"] == run_id]
            tasks = mine[mine["kind"] == "task"]
            summary = mine[mine["kind"] == "summary"]
            partner = dense_partner(part, run_id)
            for _, r in pd.concat([tasks, summary]).iterrows():
                line = {
                    "bench": bench,
                    "model": job["model"],
                    "policy": job["label"],
                    **{("job" if c == "run_id" else c): (run_id if c == "run_id" else job[c]) for c in extra},
                    "run_id": run_id,
                    "kind": r["kind"],
                    "column": r["task"] if "@" not in str(r["metric"]) else f"{r['task']} {r['metric']}",
                    "value": r["value"],
                    "ci_low": r["ci_low"],
                    "ci_high": r["ci_high"],
                    "n": r["n"],
                    "k_sparsity_measured": job["k_sparsity_measured"],
                    "v_sparsity_measured": job["v_sparsity_measured"],
                }
                if r["kind"] == "summary" and r["task"] == HEADLINE and partner is not None:
                    line |= _versus(mine, rows[rows["run_id"] == partner], job["benchmark"], partner)
                out.append(line)
    return pd.DataFrame(out)


def _versus(mine: pd.DataFrame, dense: pd.DataFrame, benchmark: str, partner: str) -> dict:
    a, b = _samples(mine), _samples(dense)
    if not a or set(a) != set(b):
        return {}
    try:
        test = stats.paired_test(a, b, weights(benchmark, a)[HEADLINE])
    except ValueError:  # different sample counts: not the same prompts after all
        return {}
    return {
        "dense_run_id": partner,
        "delta": test.diff,
        "delta_low": test.low,
        "delta_high": test.high,
        "p_value": test.p_value,
        "within_noise": test.within_noise,
    }


def write_summary(sweep_dir: Path) -> pd.DataFrame:
    """Write summary.csv (long: one line per job and score) and summary.md (one table per benchmark); with no
    finished job left, remove both, so the folder never shows a table of results that are gone."""
    rows = load_rows(sweep_dir)
    table = summary_frame(rows)
    if table.empty:
        for name in ("summary.csv", "summary.md"):
            (sweep_dir / name).unlink(missing_ok=True)
        return table
    atomic_write_text(sweep_dir / "summary.csv", table.to_csv(index=False, float_format="%.4g"))
    note = code_versions_note(rows)
    if note:
        warn(f"{sweep_dir}: {note}")
    atomic_write_text(sweep_dir / "summary.md", render(table) + (f"\n\n{note}" if note else "") + "\n")
    return table


def code_versions_note(rows: pd.DataFrame) -> str | None:
    """A line naming the code versions (git sha) behind a table's jobs when there are several: a job id leaves the
    code out, so a sweep resumed after a change mixes results of both (each job's sha is in summary.csv's rows)."""
    shas = frame(rows).groupby("run_id", sort=False)["git_sha"].first().fillna("unknown")
    if shas.nunique() <= 1:
        return None
    counts = ", ".join(f"{sha} ({n} jobs)" for sha, n in shas.value_counts().items())
    return f"note: these jobs ran on {shas.nunique()} code versions: {counts}"


def _num(x: float | None, digits: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def cell(value: float, low: float | None, high: float | None, n: int | None = None) -> str:
    """`mean [low, high]` (the CI), `mean` alone when no CI could be computed; `(n=..)` when asked."""
    text = _num(value)
    if low is not None and high is not None and not (pd.isna(low) or pd.isna(high)):
        text += f" [{_num(low)}, {_num(high)}]"
    return text + (f" (n={int(n)})" if n is not None else "")


SCORE_FIELDS = (
    "value", "ci_low", "ci_high", "n", "dense_run_id", "delta", "delta_low", "delta_high", "p_value", "within_noise",
)  # fmt: skip
HIDDEN = ("bench", "kind", "column", "run_id", "k_sparsity_measured", "v_sparsity_measured", *SCORE_FIELDS)


def _wide(part: pd.DataFrame, current: str | None) -> pd.DataFrame:
    """One line per job: label and distinguishing columns, score cells, n, Δ vs dense, measured sparsity."""
    keys = [c for c in part.columns if c not in HIDDEN]
    lines = []
    for run_id, job in part.groupby("run_id", sort=False):
        first = job.iloc[0]
        counts = job.loc[job["kind"] == "task", "n"].dropna().astype(int)
        uniform = counts.nunique() <= 1
        line = {"": "*" if run_id == current else ""} if current else {}
        line |= {k: display_value(first[k]) for k in keys}
        for _, r in job.iterrows():
            line[r["column"]] = cell(r["value"], r["ci_low"], r["ci_high"], None if uniform else r["n"])
        line["n"] = str(int(counts.iloc[0])) if uniform and len(counts) else "varies"
        head = job[(job["column"] == HEADLINE) & job["delta"].notna()] if "delta" in job else job.iloc[:0]
        if len(head):
            h = head.iloc[0]
            mark = f" {NOISE_MARK}" if h["within_noise"] else ""
            line[f"Δ {HEADLINE} vs dense"] = (
                f"{h['delta']:+.2f} [{h['delta_low']:+.2f}, {h['delta_high']:+.2f}]{mark}"
            )
        line["K sparsity"] = _num(first["k_sparsity_measured"], 3)
        line["V sparsity"] = _num(first["v_sparsity_measured"], 3)
        lines.append(line)
    wide = pd.DataFrame(lines).fillna("")
    scores = [*dict.fromkeys(part.loc[part["kind"] == "task", "column"]), *dict.fromkeys(
        part.loc[part["kind"] != "task", "column"])]  # fmt: skip
    tail = [c for c in ("n", f"Δ {HEADLINE} vs dense", "K sparsity", "V sparsity") if c in wide]
    head = [c for c in wide.columns if c not in tail and c not in scores]
    return wide[head + [c for c in scores if c in wide] + tail]


def display_value(value: object) -> object:
    """Integers that a missing value in another benchmark's rows turned into floats print as integers; a list (a
    per-layer sparsity) as its values, comma-joined like the benchmark's task lists."""
    if isinstance(value, list | tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def render(table: pd.DataFrame, current: str | None = None) -> str:
    """Markdown, one table per benchmark; `current` marks this command's job with `*` (run now, or found
    finished and skipped: the run prints which)."""
    if table.empty:
        return "(no finished jobs)"
    out = []
    for bench, part in table.groupby("bench", sort=False):
        part = part.dropna(axis=1, how="all")
        wide = _wide(part, current)
        if wide["model"].nunique() == 1:
            title = f"{wide['model'].iloc[0]} {bench}"
            wide = wide.drop(columns=["model"])
        else:
            title = str(bench)
        out.append(f"{title}\n" + wide.to_markdown(index=False, disable_numparse=True))
    legend = "cells: mean [95% bootstrap CI over samples]; n: samples per task"
    if "delta" in table and table["delta"].notna().any():
        legend += (
            f"; Δ {HEADLINE} vs dense: paired difference to the dense job on the same prompts "
            f"[paired-bootstrap 95% CI], {NOISE_MARK} = within noise (the CI covers 0 or the sign-flip p >= 0.05)"
        )
    if current:
        legend += "; * = this command's job (run now, or already finished and skipped)"
    return "\n\n".join(out) + "\n\n" + legend
