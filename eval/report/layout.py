"""Result rows of a sweep -> the paper's table layout: one row per job, score columns with 95% CIs, the paired
difference to dense, and the paper's numbers beside the jobs that ran the paper's setting (paper.matches).

Scores: RULER and other benchmarks show their tasks; LongBench shows the six English categories (the mean of their
present tasks) or, with `per_task`, every task. "Average" is `avg` of eval.averages: the paper's mean of the
English task scores (its dense 43.19 is the mean of the 16 tasks); Chinese tasks never enter it, and a table of
Chinese tasks only shows their `avg_zh` instead, as summary.md does (with no Δ vs dense, as there).
CIs and paired tests come from the per-sample scores the job stored (eval.stats); a job written before they were
stored is re-scored from its predictions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eval import stats
from eval.averages import weights
from eval.report import paper, policies
from eval.report.kv_size import kv_fraction
from eval.report.samples import sample_scores
from eval.rows import benchmark_columns, frame, model_columns
from eval.tables import IDENTITY_FIELDS, dense_partner, display_text, distinguishing, labels

JOB_FIELDS = [
    "run_id",
    "sweep",
    "samples_id",
    "model",
    "model_path",
    "benchmark",
    "benchmark_length",
    "head_dim",
    "dtype",
    "device",
    "seed",
    "mode",
    "window",
    "keep_rule",
    "policy",
    *policies.KEY_FIELDS,
    *(f for f in policies.VARIANT_FIELDS if f not in ("keep_rule", "value_dtype")),
    "k_sparsity_measured",
    "v_sparsity_measured",
    "kv_bytes",  # the measured KV size of rows that predate kv_payload_bytes
    "kv_payload_bytes",  # the measured KV size (any batch size)
    "dense_kv_bytes",
    "kv_evicted_bytes",  # the KV size of an evicting job counts its evicted tokens as dense reference
    "value_dtype",  # fp8 jobs are priced in the fp8 layout
]
# what tells jobs apart, as the sweep tables tell them apart
JOB_FIELDS += [f for f in IDENTITY_FIELDS if f not in JOB_FIELDS]
AVERAGE = "Average"
ZH_AVERAGE = "avg_zh"  # what a LongBench table of Chinese tasks only shows instead of the (English) Average
VERSUS = "Δ vs dense"  # the Average's paired difference to the dense job on the same prompts


@dataclass
class Group:
    """The jobs of one (model, benchmark) in a sweep that ran the same tasks: one row per job with its task scores
    as columns."""

    model: str
    bench: str  # e.g. "ruler-1024", "longbench"; + the task list's name where other jobs ran other tasks
    jobs: pd.DataFrame
    tasks: list[str]
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # {run_id: {task: per-sample}}
    shown: list[str] = field(default_factory=list)  # identity columns that tell apart jobs sharing a label
    task_list: str = ""  # the tasks, where other jobs of (model, bench) ran others: it names the table

    @property
    def benchmark(self) -> str:
        return str(self.jobs["benchmark"].iloc[0])

    @property
    def paper_match(self) -> bool:
        """Some job ran the paper's setting (paper.matches): the paper's numbers may sit beside it."""
        return any(paper.matches(job, self.tasks) for _, job in self.jobs.iterrows())

    def published(self, experiment: str) -> dict[str, dict[str, Any]]:
        """{run_id: the paper's entry (paper.lookup)} of the jobs that ran the paper's setting with a policy the
        paper published."""
        lookup = paper.lookup(experiment)
        return {
            job["run_id"]: lookup[job["key"]]
            for _, job in self.jobs.iterrows()
            if job["key"] in lookup and paper.matches(job, self.tasks)
        }

    def ci(self, run_id: str, task_weights: dict[str, float]) -> tuple[float, float]:
        """95% CI of the weighted mean of one job's task scores; NaN when its per-sample scores are unknown."""
        mine = self.samples.get(run_id, {})
        if not all(mine.get(t) for t in task_weights):
            return float("nan"), float("nan")
        return stats.bootstrap_ci({t: mine[t] for t in task_weights}, task_weights)

    def average_weights(self) -> dict[str, float]:
        """The weights of `avg` (empty where no English LongBench task ran: there is no Average)."""
        return weights(self.benchmark, self.tasks).get("avg", {})

    @property
    def headline(self) -> str:
        """The average the table and plots show: the Average, else (Chinese LongBench tasks only) `avg_zh`."""
        return AVERAGE if self.average_weights() else ZH_AVERAGE

    def headline_weights(self) -> dict[str, float]:
        """The task weights of `headline` (eval.averages `avg` or `avg_zh`)."""
        if self.headline == AVERAGE:
            return self.average_weights()
        return weights(self.benchmark, self.tasks)[ZH_AVERAGE]

    def versus_dense(self, run_id: str) -> stats.Paired | None:
        """Paired test of the Average against the dense job that saw the same prompts (mask mode preferred)."""
        partner = dense_partner(self.jobs.set_index("run_id"), run_id)
        if partner is None:
            return None
        w = self.average_weights()
        a, b = self.samples.get(run_id, {}), self.samples.get(partner, {})
        if not w or not all(a.get(t) and b.get(t) for t in w):
            return None
        try:
            return stats.paired_test({t: a[t] for t in w}, {t: b[t] for t in w}, w)
        except ValueError:  # different sample counts: not the same prompts after all
            return None


def _stored_samples(part: pd.DataFrame) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for run_id, task, samples in zip(part["run_id"], part["task"], part["samples"]):
        if isinstance(samples, list) and samples:
            out.setdefault(run_id, {})[task] = samples
    return out


def _rescored(sweep_dir: Path, run_id: str, benchmark: str) -> dict[str, list[float]]:
    scores = sample_scores(Path(sweep_dir) / run_id, benchmark).sort_values(["task", "index"])
    return {t: list(part["score"]) for t, part in scores.groupby("task")}


def groups(rows: pd.DataFrame, sweep_dir: Path | None = None, noise: bool = True) -> list[Group]:
    """Split a sweep's long-format rows into (model, benchmark, task list) groups of one row per job: an Average
    over other tasks is another number, so jobs that ran other task lists get their own table.

    `noise`: keep per-sample scores for CIs (from the rows; re-scored from `sweep_dir`'s predictions for jobs
    that did not store them)."""
    if rows.empty:
        return []
    rows = frame(rows)
    rows = pd.concat([rows, benchmark_columns(rows), model_columns(rows)], axis=1)
    rows["bench"] = rows["benchmark"] + rows["benchmark_length"].map(
        lambda x: f"-{int(x)}" if pd.notna(x) else ""
    )
    tasks_rows = rows[(rows["kind"] == "task") & ~rows["metric"].str.contains("@", regex=False)].copy()
    ran = tasks_rows.groupby("run_id", sort=False)["task"].agg(lambda tasks: tuple(sorted(set(tasks))))
    tasks_rows["_ran"] = tasks_rows["run_id"].map(ran)
    lists = tasks_rows.groupby(["model", "bench"], sort=False)["_ran"].nunique()
    return [
        _group(str(model), str(bench), part.drop(columns="_ran"), lists[(model, bench)] > 1, sweep_dir, noise)
        for (model, bench, _), part in tasks_rows.groupby(["model", "bench", "_ran"], sort=False)
    ]


def _group(
    model: str, bench: str, part: pd.DataFrame, named: bool, sweep_dir: Path | None, noise: bool
) -> Group:
    """One group's jobs from its task rows; `named`: other jobs of (model, bench) ran other tasks."""
    tasks = list(dict.fromkeys(part["task"]))
    scores = part.pivot_table(index="run_id", columns="task", values="value", aggfunc="first")[tasks]
    config_fields = [c for c in part.columns if c.startswith(("benchmark.", "model."))]
    jobs = part.groupby("run_id", sort=False)[[*JOB_FIELDS[1:], *config_fields]].first()
    jobs["n"] = part.groupby("run_id")["n"].min()
    jobs = jobs.join(scores)
    group = Group(model, f"{bench}-{_list_name(tasks)}" if named else bench, jobs, tasks)
    group.task_list = ",".join(tasks) if named else ""
    # over the reported (2-decimal) task scores, as LongBench's and RULER's averages are taken
    jobs[group.headline] = [_weighted(job, group.headline_weights()) for _, job in jobs.iterrows()]
    jobs["key"] = [policies.policy_key(r) for _, r in jobs.iterrows()]
    fractions = [kv_fraction(r) for _, r in jobs.iterrows()]
    jobs["kv_fraction"] = [f for f, _ in fractions]
    jobs["kv_source"] = [s for _, s in fractions]
    jobs["label"] = labels(jobs)
    group.jobs = jobs.reset_index()
    group.shown = distinguishing(jobs)
    if noise:
        group.samples = _stored_samples(part)
        for run_id, benchmark in zip(jobs.index, jobs["benchmark"]):
            if run_id not in group.samples and sweep_dir is not None:
                group.samples[run_id] = _rescored(sweep_dir, run_id, benchmark)
        cis = [group.ci(r, group.headline_weights()) for r in jobs.index]
        group.jobs[f"{group.headline} lo"] = [lo for lo, _ in cis]
        group.jobs[f"{group.headline} hi"] = [hi for _, hi in cis]
    return group


def _list_name(tasks: list[str]) -> str:
    """A task list as part of file names: its tasks, or their count and a digest when that is too long."""
    joined = "+".join(tasks)
    if len(joined) <= 40:
        return joined
    return f"{len(tasks)}tasks-{hashlib.sha1(','.join(sorted(tasks)).encode()).hexdigest()[:6]}"


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
    """{column: the tasks it averages}, in display order, the headline average (Group.headline) excluded."""
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
    """One row per job (+ the paper's row under it when the job ran the paper's setting): label, what tells apart
    jobs of the same label, the task list when it names the table, method, nominal K/V sparsity, score columns
    and the headline average (Group.headline) each with `<column> lo`/`hi` (95% CI), the paired Δ vs dense,
    measured sparsity, KV size, samples per task."""
    columns = score_columns(group, per_task)
    published = group.published(experiment)
    noise = any(group.samples.values())
    records = []
    for _, job in ordered(group, experiment).iterrows():
        record = {"policy": job["label"], **{c: display_text(job[c]) for c in group.shown}}
        record |= {"tasks": group.task_list} if group.task_list else {}
        record |= {"method": policies.family(job["key"]), "K": job["k_sparsity"], "V": job["v_sparsity"]}
        # one task: its score; a category: the mean of its tasks' scores; then the headline average
        averaged = {column: _equal(tasks) for column, tasks in columns.items()}
        for column, w in (averaged | {group.headline: group.headline_weights()}).items():
            record[column] = _weighted(job, w)
            if noise:
                record[f"{column} lo"], record[f"{column} hi"] = group.ci(job["run_id"], w)
        if noise:
            test = group.versus_dense(job["run_id"])
            record |= {
                VERSUS: test.diff if test else None,
                f"{VERSUS} lo": test.low if test else None,
                f"{VERSUS} hi": test.high if test else None,
                "p": test.p_value if test else None,
                "within noise": ("yes" if test.within_noise else "no") if test else None,
            }
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
        if job["run_id"] in published:
            entry = published[job["run_id"]]
            records.append(
                {
                    "source": "paper",
                    "policy": job["label"],
                    "method": entry["name"],
                    "K": job["k_sparsity"],
                    "V": job["v_sparsity"],
                    **{c: entry["values"].get(c) for c in [*columns, group.headline]},
                }
            )
    table = pd.DataFrame(records)
    numeric = [c for c in table if c.endswith((" lo", " hi")) or c in (*columns, group.headline, VERSUS, "p")]
    return table.astype({c: float for c in numeric})


def _equal(tasks: list[str]) -> dict[str, float]:
    return {t: 1 / len(tasks) for t in tasks}


def _weighted(job: pd.Series, weights: dict[str, float]) -> float:
    return sum(w * job[t] for t, w in weights.items())
