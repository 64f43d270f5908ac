"""The paper's two figures for a sweep: accuracy vs sparsity per method, accuracy vs KV size (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window (headless runs, callbacks)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from eval.report import policies  # noqa: E402
from eval.report.kv_size import MEASURED  # noqa: E402
from eval.report.layout import Group, ordered  # noqa: E402
from eval.tables import dense_jobs, dense_partner, identity_columns, identity_values  # noqa: E402


def _lines(group: Group, experiment: str) -> dict[str, pd.DataFrame]:
    """{label: one line's jobs with their dense partners, by x}, in table order. A line is one policy family swept
    over sparsity: its jobs agree on every identity field the tables tell jobs apart by (the label names those that
    differ between lines), and its dense point is the dense job asked the same prompts (a job with other prompts,
    seed or model is another experiment). With no pruned job, the dense jobs are the lines."""
    jobs = ordered(group, experiment)
    jobs["x"] = [policies.sparsity(k) for k in jobs["key"]]
    dense = dense_jobs(jobs)
    swept = jobs[~dense] if (~dense).any() else jobs
    family = pd.Series([policies.family(k) for k in swept["key"]], index=swept.index, name="family")
    differ = _differing(swept)
    by_run = jobs.set_index("run_id", drop=False)
    lines = {}
    for key, line in swept.groupby([family, *(differ[c].fillna("") for c in differ)], sort=False):
        partners = dict.fromkeys(p for r in line["run_id"] if (p := dense_partner(by_run, r)) is not None)
        label = ", ".join([key[0], *(f"{c}={v}" for c, v in zip(differ, key[1:]) if v)])
        lines[label] = pd.concat([by_run.loc[list(partners)], line]).sort_values("x", kind="stable")
    return lines


def _differing(jobs: pd.DataFrame) -> pd.DataFrame:
    """The identity fields (eval.tables, model knobs included) in which `jobs` differ, as comparable text."""
    values = pd.DataFrame({c: identity_values(jobs, c) for c in identity_columns(jobs)}, index=jobs.index)
    return values[[c for c in values if values[c].nunique() > 1]]


def _title(group: Group, sweep: str) -> str:
    n = int(group.jobs["n"].min())
    return f"{sweep}: {group.model}, {group.bench} ({len(group.tasks)} tasks, n={n} per task)"


def accuracy_vs_sparsity(group: Group, experiment: str, sweep: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=130)
    published = group.published(experiment)
    score = group.headline
    for i, (family, line) in enumerate(_lines(group, experiment).items()):
        color = f"C{i % 10}"
        ci = None
        if f"{score} lo" in line:  # asymmetric error bars: the 95% bootstrap CI
            ci = [line[score] - line[f"{score} lo"], line[f"{score} hi"] - line[score]]
        ax.errorbar(line["x"], line[score], yerr=ci, color=color, marker="o", capsize=3, label=family)
        ref = [
            (x, published[r]["values"].get(score))
            for x, r in zip(line["x"], line["run_id"])
            if r in published
        ]
        if ref:
            xs, ys = zip(*ref)
            ax.plot(xs, ys, color=color, ls="--", marker="x", alpha=0.7, label=f"{family} (paper)")
    ax.set_xlabel("sparsity of the pruned cache(s) (fraction of entries zeroed)")
    ax.set_ylabel(f"{score} score" + (" (95% CI)" if f"{score} lo" in group.jobs else ""))
    ax.set_title(_title(group, sweep), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def accuracy_vs_kv_size(group: Group, experiment: str, sweep: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=130)
    sources = set()
    score = group.headline
    for i, (family, line) in enumerate(_lines(group, experiment).items()):
        color = f"C{i % 10}"
        line = line.sort_values("kv_fraction")
        ax.plot(line["kv_fraction"], line[score], color=color, alpha=0.6, label=family)
        for _, job in line.iterrows():
            measured = job["kv_source"] == MEASURED
            sources.add(job["kv_source"])
            ax.plot(
                job["kv_fraction"],
                job[score],
                marker="o",
                ls="",
                color=color,
                markerfacecolor=color if measured else "white",
            )
    label = "KV cache size / dense (smaller = more compressed)"
    if sources != {MEASURED}:
        label += "\nhollow: computed from the measured sparsity (fp16 layout, window excluded)"
        label += "\nfilled: measured bytes (kv.mode=compressed)"
    ax.set_xlabel(label, fontsize=9)
    ax.set_ylabel(f"{score} score")
    ax.set_title(_title(group, sweep), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
