"""Result rows of a sweep -> the paper's table layout: one row per policy, score columns, and the paper's
numbers side by side when the model and benchmark are the paper's.

Scores: RULER and other benchmarks show their tasks; LongBench shows the six categories (the mean of their
present tasks) or, with `per_task`, the 16 tasks. "Average" is always the mean of the task scores present: the
paper's convention (its dense 43.19 is the mean of the 16 tasks), NOT the LongBench leaderboard mean of category
means that LongBench's own "avg" summary row holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from eval.report import paper, policies
from eval.report.kv_size import kv_fraction
from eval.report.samples import average_se, sample_scores

JOB_FIELDS = [
    "run_id",
    "sweep",
    "model",
    "model_path",
    "benchmark",
    "benchmark_length",
    "head_dim",
    "mode",
    "window",
    "keep_rule",
    "policy",
    *policies.KEY_FIELDS,
    "k_sparsity_measured",
    "v_sparsity_measured",
    "kv_bytes",
    "dense_kv_bytes",
]
AVERAGE = "Average"


@dataclass
class Group:
    """The jobs of one (model, benchmark) in a sweep: one row per job with its task scores as columns."""

    model: str
    bench: str  # e.g. "ruler-1024", "longbench"
    jobs: pd.DataFrame
    tasks: list[str]

    @property
    def benchmark(self) -> str:
        return str(self.jobs["benchmark"].iloc[0])

    @property
    def paper_match(self) -> bool:
        path = self.jobs["model_path"].iloc[0]
        return paper.matches(self.model, path if isinstance(path, str) else None, self.benchmark)


def groups(rows: pd.DataFrame, sweep_dir: Path | None = None) -> list[Group]:
    """Split a sweep's long-format rows into (model, benchmark) groups of one row per job.

    With `sweep_dir`, each job also gets `se`: the standard error of its Average from its predictions.
    """
    if rows.empty:
        return []
    rows = rows.copy()
    for field in JOB_FIELDS:
        if field not in rows:
            rows[field] = None
    rows["bench"] = rows["benchmark"] + rows["benchmark_length"].map(
        lambda x: f"-{int(x)}" if pd.notna(x) else ""
    )
    tasks_rows = rows[(rows["kind"] == "task") & ~rows["metric"].str.contains("@", regex=False)]
    out = []
    for (model, bench), part in tasks_rows.groupby(["model", "bench"], sort=False):
        tasks = list(dict.fromkeys(part["task"]))
        scores = part.pivot_table(index="run_id", columns="task", values="value", aggfunc="first")[tasks]
        jobs = part.groupby("run_id", sort=False)[JOB_FIELDS[1:]].first()
        jobs["n"] = part.groupby("run_id")["n"].min()
        jobs = jobs.join(scores)
        jobs[AVERAGE] = scores.mean(axis=1)
        jobs["key"] = [policies.policy_key(r) for _, r in jobs.iterrows()]
        fractions = [kv_fraction(r) for _, r in jobs.iterrows()]
        jobs["kv_fraction"] = [f for f, _ in fractions]
        jobs["kv_source"] = [s for _, s in fractions]
        if sweep_dir is not None:
            jobs["se"] = [
                average_se(sample_scores(Path(sweep_dir) / run_id, benchmark))
                for run_id, benchmark in zip(jobs.index, jobs["benchmark"])
            ]
        out.append(Group(str(model), str(bench), jobs.reset_index(), tasks))
    return out


def ordered(group: Group, experiment: str) -> pd.DataFrame:
    """Jobs in the paper's row order for this experiment, then the rest by (sparsity, family); compressed-mode
    jobs right after their mask-mode twin."""
    rank = {key: i for i, key in enumerate(paper.order(experiment))}
    jobs = group.jobs.copy()
    jobs["_rank"] = [rank.get(k, len(rank)) for k in jobs["key"]]
    jobs["_s"] = [policies.sparsity(k) for k in jobs["key"]]
    jobs["_family"] = [policies.family(k) for k in jobs["key"]]
    jobs = jobs.sort_values(["_rank", "_s", "_family", "window", "keep_rule", "mode"], kind="stable")
    return jobs.drop(columns=["_rank", "_s", "_family"]).reset_index(drop=True)


def score_columns(group: Group, per_task: bool) -> dict[str, list[str]]:
    """{column: the tasks it averages}, in display order, Average excluded."""
    if group.benchmark == "longbench" and not per_task:
        from eval.longbench.metrics import EN_CATEGORY_TASKS

        return {
            cat: [t for t in tasks if t in group.tasks]
            for cat, tasks in EN_CATEGORY_TASKS.items()
            if any(t in group.tasks for t in tasks)
        }
    if group.benchmark == "longbench":
        from eval.longbench.metrics import EN_CATEGORY_TASKS

        order = [t for tasks in EN_CATEGORY_TASKS.values() for t in tasks]
        return {
            t: [t] for t in sorted(group.tasks, key=lambda t: order.index(t) if t in order else len(order))
        }
    return {t: [t] for t in group.tasks}


def accuracy_table(group: Group, experiment: str, per_task: bool = False) -> pd.DataFrame:
    """One row per job (+ the paper's row under it when the model matches): label, method, nominal K/V
    sparsity, score columns, Average, measured sparsity, KV size, samples per task."""
    columns = score_columns(group, per_task)
    published = paper.lookup(experiment) if group.paper_match else {}
    records = []
    for _, job in ordered(group, experiment).iterrows():
        label = job["policy"] + (" [compressed]" if job["mode"] == "compressed" else "")
        record = {
            "policy": label,
            "method": policies.family(job["key"]),
            "K": job["k_sparsity"],
            "V": job["v_sparsity"],
            **{c: job[tasks].mean() for c, tasks in columns.items()},
            AVERAGE: job[AVERAGE],
        }
        if "se" in job:
            record["± SE"] = job["se"]
        record |= {
            "K meas.": job["k_sparsity_measured"],
            "V meas.": job["v_sparsity_measured"],
            "KV size": job["kv_fraction"],
            "KV size from": job["kv_source"],
            "n/task": job["n"],
        }
        if published:
            record = {"source": "ours", **record}
        records.append(record)
        if job["key"] in published:
            entry = published[job["key"]]
            records.append(
                {
                    "source": "paper",
                    "policy": label,
                    "method": entry["name"],
                    "K": job["k_sparsity"],
                    "V": job["v_sparsity"],
                    **{c: entry["values"].get(c) for c in [*columns, AVERAGE]},
                }
            )
    table = pd.DataFrame(records)
    return table.astype({c: float for c in [*columns, AVERAGE] if c in table})
