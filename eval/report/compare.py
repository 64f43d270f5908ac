"""Is policy A better than policy B beyond sampling noise? A paired comparison on the same samples.

    python -m eval.report.compare results/key_pruning "K0.7" "ThinK-K0.7" ["K0.7[oa]" "K0.7" ...]

Pairs of jobs, each named by its policy label (as in the tables) or its run id (the job folder's name: where
several jobs share a label); prints A - B of the Average (eval.averages `avg`), its paired-bootstrap 95% CI and
the sign-flip permutation p-value (eval.stats). Both jobs must have run the same tasks on the same prompts (the
same `samples_id`), so per-sample differences cancel the prompt difficulty.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from eval import stats
from eval.report.layout import Group, groups
from eval.results import load_rows
from eval.tables import display_value


def _groups(sweep_dir: Path) -> list[Group]:
    if not sweep_dir.is_dir():
        raise ValueError(f"{sweep_dir}: no such folder; give a sweep's folder, e.g. results/<sweep>")
    found = groups(load_rows(sweep_dir), sweep_dir)
    if not found:
        raise ValueError(
            f"no finished jobs under {sweep_dir}: run the sweep first, or give another sweep's folder"
        )
    return found


def _job(found: list[Group], name: str, sweep_dir: Path) -> tuple[Group, pd.Series]:
    """The job with run id `name`, else the one labelled `name`, and its group."""
    jobs = [(g, job) for g in found for _, job in g.jobs.iterrows()]
    hits = [hit for hit in jobs if hit[1]["run_id"] == name] or [
        hit for hit in jobs if hit[1]["label"] == name
    ]
    if not hits:
        labels = sorted({label for g in found for label in g.jobs["label"]})
        raise ValueError(
            f"no job labelled {name!r} in {sweep_dir}; give a label of {labels} or a job's run id"
        )
    if len(hits) > 1:
        which = "; ".join(_describe(g, job) for g, job in hits)
        raise ValueError(
            f"{len(hits)} jobs in {sweep_dir} are labelled {name!r}: give one's run id instead ({which})"
        )
    return hits[0]


def _describe(group: Group, job: pd.Series) -> str:
    """A job's run id and what sets it apart: its benchmark (and task list) and the fields its table shows."""
    shown = [f"{c}={display_value(job[c])}" for c in group.shown if c != "run_id"]
    return f"{job['run_id']} ({', '.join([f'{group.model} {group.bench}', *shown])})"


def compare(sweep_dir: Path, a: str, b: str) -> stats.Paired:
    """A - B of the Average on the same samples; ValueError (the message says what to give instead) when `a` or
    `b` names no job or several, or the two did not run the same tasks on the same prompts."""
    found = _groups(Path(sweep_dir))
    (group, job_a), (other, job_b) = _job(found, a, sweep_dir), _job(found, b, sweep_dir)
    if group is not other:
        raise ValueError(
            f"{_describe(group, job_a)} and {_describe(other, job_b)} ran different models, benchmarks or task "
            "lists: compare two jobs that ran the same tasks"
        )
    if job_a["samples_id"] != job_b["samples_id"]:
        raise ValueError(
            f"{a!r} and {b!r} were not asked the same prompts (samples_id differs: another seed, model or benchmark "
            "setting): compare two jobs asked the same prompts"
        )
    w = group.average_weights()
    if not w:
        raise ValueError(f"{a!r} and {b!r} ran no English LongBench task: they have no Average to compare")
    sa, sb = group.samples.get(job_a["run_id"], {}), group.samples.get(job_b["run_id"], {})
    if not all(sa.get(t) and sb.get(t) for t in w):
        raise ValueError(
            f"{a!r} or {b!r} has no per-sample scores (neither in its result rows nor as predictions): re-run it"
        )
    return stats.paired_test({t: sa[t] for t in w}, {t: sb[t] for t in w}, w)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("policies", nargs="+", help="pairs: A1 B1 [A2 B2 ...] (labels or run ids)")
    args = parser.parse_args(argv)
    if len(args.policies) % 2:
        parser.error("give policies in pairs (A B)")
    for a, b in zip(args.policies[::2], args.policies[1::2]):
        try:
            r = compare(args.sweep_dir, a, b)
        except ValueError as err:  # the user's input: one line, not a traceback
            parser.exit(2, f"error: {err}\n")
        noise = " (within noise)" if r.within_noise else ""
        print(f"{a} - {b}: {r.diff:+.2f} [{r.low:+.2f}, {r.high:+.2f}] p={r.p_value:.4f}, n={r.n}{noise}")


if __name__ == "__main__":
    main()
