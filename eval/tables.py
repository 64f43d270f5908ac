"""Result rows -> the table a person reads: one row per pruning config, one column per task and average."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eval.results import atomic_write_text, load_rows

POLICY_ORDER = ("k_sparsity", "v_sparsity", "k_scorer", "v_scorer", "k_direction", "v_direction")


def pivot(rows: pd.DataFrame) -> pd.DataFrame:
    """Wide table: index = (model, benchmark, policy), columns = task scores, summary columns, measured sparsity."""
    if rows.empty:
        return pd.DataFrame()
    rows = rows.copy()
    index = ["model", "bench", "policy"]
    # the same policy run in both modes is two rows, not one silently picked
    rows["policy"] = rows["policy"].where(rows["mode"] != "compressed", rows["policy"] + " [compressed]")
    rows["bench"] = rows["benchmark"] + rows["benchmark_length"].map(
        lambda x: f"-{int(x)}" if pd.notna(x) else ""
    )
    order = rows.sort_values(list(POLICY_ORDER) + ["window", "keep_rule", "mode"])["policy"].drop_duplicates()
    tasks = list(dict.fromkeys(rows.loc[rows["kind"] == "task", "task"]))
    summaries = list(dict.fromkeys(rows.loc[rows["kind"] == "summary", "task"]))
    wide = rows.pivot_table(index=index, columns="task", values="value", aggfunc="first")
    wide = wide.reindex(columns=[c for c in tasks + summaries if c in wide.columns])
    facts = rows.groupby(index)[["k_sparsity_measured", "v_sparsity_measured"]].first()
    facts.columns = ["K sparsity", "V sparsity"]
    wide = wide.join(facts)
    policy_rank = {p: i for i, p in enumerate(order)}
    wide = wide.sort_index(key=lambda col: col.map(policy_rank) if col.name == "policy" else col)
    return wide


def write_summary(sweep_dir: Path) -> pd.DataFrame:
    """Write summary.csv and summary.md for a sweep folder and return the table."""
    table = pivot(load_rows(sweep_dir))
    if not table.empty:
        atomic_write_text(sweep_dir / "summary.csv", table.to_csv(float_format="%.2f"))
        atomic_write_text(sweep_dir / "summary.md", render(table) + "\n")
    return table


def render(table: pd.DataFrame) -> str:
    """Markdown, dropping index levels that are the same on every row (one model, one benchmark)."""
    if table.empty:
        return "(no finished jobs)"
    flat = table.reset_index()
    constant = [c for c in ("model", "bench") if flat[c].nunique() == 1]
    title = " ".join(str(flat[c].iloc[0]) for c in constant)
    flat = flat.drop(columns=constant)
    return (f"{title}\n" if title else "") + flat.to_markdown(index=False, floatfmt=".2f")
