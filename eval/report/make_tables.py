"""Paper-layout tables (markdown, LaTeX, CSV) and plots (PNG) of finished sweeps; optionally a W&B summary run.

    python scripts/make_tables.py key_pruning value_pruning main_grid [--results results] [--out DIR]
        [--per-task] [--wandb offline|online]
    python scripts/make_tables.py decode_speed      # Table 14 from results/decode/ and the current kernel bench

Without --out, a sweep's report goes to results/<sweep>/report/; with --out, to DIR/<sweep>/.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from eval.report import decode, plots, render, wandb_summary
from eval.report.layout import Group, accuracy_table, groups
from eval.results import load_rows
from eval.tables import summary_frame

CAPTIONS = {
    "key_pruning": "Key pruning (V dense): ThinK (structured) vs per-token output-aware vs per-token magnitude",
    "value_pruning": "Value pruning (K dense): ThinK-V, per-channel magnitude / output-aware, per-token magnitude",
    "main_grid": "Main grid: per-token magnitude pruning of K, V or both vs dense and ThinK",
    "compression_accuracy": "Accuracy vs KV size: per-token magnitude K+V (Mustafar) vs ThinK K+V channels",
    "word_quota": "Keep rules: exact top-k per token vs the word rule (the same count, per-32-channel-word quotas)",
}
NOTES = (
    "Average = `avg`: the paper's mean of the English task scores (Chinese tasks never enter it; a LongBench table "
    "of Chinese tasks only shows their `avg_zh` instead, with no Δ vs dense, as summary.md does). "
    "value [lo, hi] = mean and 95% percentile-bootstrap CI over samples (10,000 resamples within each task, "
    "seeded). Δ vs dense = Average minus the dense job's on the same prompts, with a paired-bootstrap 95% CI and a "
    "sign-flip permutation p-value; 'within noise' when that CI covers 0 or p >= 0.05. K, V = nominal sparsity; K/V meas. = "
    "measured over the pruned tokens. KV size = KV bytes / dense: 'measured' from kv.mode=compressed jobs "
    "(stored payload, window included; allocated bytes in rows that predate payload), 'closed-form' = fp16 layout "
    "bytes of the pruned tokens at the measured sparsity (computed, not measured)."
)


@dataclass
class Report:
    sweep: str
    out_dir: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    wandb_dir: str | None = None


def _caption(group: Group, experiment: str, sweep: str) -> str:
    lo, hi = int(group.jobs["n"].min()), int(group.jobs["n"].max())
    n = f"{lo}" if lo == hi else f"{lo}–{hi} (each job's in its row)"
    head = CAPTIONS.get(experiment, f"Sweep {sweep}")
    paper = (
        " Rows 'paper': the published Llama-3-8B-Instruct LongBench numbers (eval/report/paper_numbers.json)."
        if group.paper_match
        else ""
    )
    return (
        f"**{head}** - model {group.model}, {group.bench}, {len(group.tasks)} tasks, n = {n} samples per task, "
        f"{len(group.jobs)} jobs.\n\n{NOTES}{paper}"
    )


def make_tables(
    results_dir: Path,
    sweep: str,
    out_dir: Path | None = None,
    experiment: str | None = None,
    per_task: bool = False,
    logger: dict[str, Any] | None = None,
    noise: bool = True,
) -> Report:
    """Write the report of `results_dir/<sweep>` (layout of `experiment`, default the sweep name) to `out_dir`
    (default results_dir/<sweep>/report) and log it to W&B when `logger` is an enabled wandb logger config.

    `noise`: 95% CIs and the paired Δ vs dense from per-sample scores (stored in the rows, or re-scored from the
    predictions of jobs that did not store them).
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir else results_dir / sweep / "report"
    if sweep == "decode_speed":
        report = _decode_report(results_dir, out_dir)
    else:
        report = _accuracy_report(results_dir, sweep, out_dir, experiment or sweep, per_task, noise)
    if logger and wandb_summary.enabled(logger):
        images = [p for p in report.files if p.suffix == ".png"]
        tables = report.tables
        if sweep != "decode_speed":  # the sweep's summary.md table, as the end-of-sweep summary run holds it
            tables = {"summary": summary_frame(load_rows(results_dir / sweep)), **tables}
        report.wandb_dir = wandb_summary.log_summary(logger, results_dir, sweep, tables, images)
    return report


def _accuracy_report(
    results_dir: Path, sweep: str, out_dir: Path, experiment: str, per_task: bool, noise: bool
) -> Report:
    sweep_dir = results_dir / sweep
    rows = load_rows(sweep_dir)
    if rows.empty:
        raise FileNotFoundError(f"no finished jobs under {sweep_dir} (run the sweep first)")
    report = Report(sweep, out_dir)
    for group in groups(rows, sweep_dir, noise):
        name = f"{sweep}_{group.model}_{group.bench}"
        stem = out_dir / name
        caption = _caption(group, experiment, sweep)
        table = accuracy_table(group, experiment)
        report.tables[name] = table
        report.files += render.write(table, caption, stem)
        if per_task and group.benchmark == "longbench":
            table = accuracy_table(group, experiment, per_task=True)
            report.tables[f"{name}_per_task"] = table
            report.files += render.write(table, caption, stem.with_name(f"{name}_per_task"))
        report.files.append(
            plots.accuracy_vs_sparsity(
                group, experiment, sweep, stem.with_name(f"{name}_accuracy_vs_sparsity.png")
            )
        )
        report.files.append(
            plots.accuracy_vs_kv_size(
                group, experiment, sweep, stem.with_name(f"{name}_accuracy_vs_kv_size.png")
            )
        )
    return report


def _decode_report(results_dir: Path, out_dir: Path) -> Report:
    report = Report("decode_speed", out_dir)
    spec = decode.paper.numbers()["decode_speed"]
    measured = results_dir / "decode"
    table = decode.table14(measured)
    has_ours = any(c.startswith("ours") for c in table.columns)
    caption = (
        f"**Table 14 layout: TTFT and decode speed, dense vs Mustafar.** 'paper' columns: {spec['device']}, "
        "decode 512/1024/2048 tokens (transcribed). "
        + (
            f"'ours' columns: scripts/bench_decode.py results in {measured} (random-weight model, fixed context; "
            "compare speed-ups, not absolute tokens/s)."
            if has_ours
            else f"No end-to-end measurement yet: run scripts/bench_decode.py --out {measured} on a GPU."
        )
    )
    report.tables["decode_speed"] = table
    report.files += render.write(table, caption, out_dir / "decode_speed")
    bench = results_dir / decode.CURRENT_KERNEL_BENCH
    if not bench.exists():
        print(f"decode_speed: no kernel benchmark at {bench}; the kernel-only table is left out", flush=True)
    else:
        loaded = json.loads(bench.read_text())
        kernels = decode.kernel_table(loaded)
        command = loaded["meta"].get("command")  # recorded from round 8 on
        caption = (
            f"**Decode attention kernel only** ({loaded['meta']['device']}, Llama-3-8B shapes: 32 q / 8 KV heads, "
            "D 128, fp16, window 32): the default launch of the current sparse decoders (keep rule `word`: the "
            "scatter decoder; `-fp8`: fp8 values) vs dense SDPA, per layer, L2 flushed, from "
            f"{results_dir.name}/{decode.CURRENT_KERNEL_BENCH}"
            + (f" (`{command}`)" if command else "")
            + ". Not end-to-end: "
            "weights and the rest of the step are excluded."
        )
        report.tables["decode_kernels"] = kernels
        report.files += render.write(kernels, caption, out_dir / "decode_kernels")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sweep names under --results (decode_speed: Table 14)")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, help="write each sweep's report to OUT/<sweep>/")
    parser.add_argument(
        "--experiment", choices=sorted(CAPTIONS), help="table layout to use (default: the sweep name)"
    )
    parser.add_argument("--per-task", action="store_true", help="LongBench: also the 16-task table")
    parser.add_argument("--no-noise", action="store_true", help="skip the CIs and paired tests (faster)")
    parser.add_argument("--wandb", choices=["offline", "online"], help="log a summary run per sweep")
    parser.add_argument("--project", default="mustafar")
    args = parser.parse_args(argv)
    logger = {"name": "wandb", "mode": args.wandb, "project": args.project} if args.wandb else None
    for sweep in tqdm(args.sweeps, desc="reports", disable=len(args.sweeps) < 2):
        try:
            report = make_tables(
                args.results,
                sweep,
                out_dir=args.out / sweep if args.out else None,
                experiment=args.experiment,
                per_task=args.per_task,
                logger=logger,
                noise=not args.no_noise,
            )
        except (FileNotFoundError, ValueError) as err:  # the user's input: one line, not a traceback
            parser.exit(2, f"error: {err}\n")
        print(f"== {sweep}: {len(report.files)} files in {report.out_dir}")
        for name, table in report.tables.items():
            print(f"\n{name}\n{render.markdown(table, '').strip()}\n")
        if report.wandb_dir:
            print(f"W&B summary run: {report.wandb_dir}")


if __name__ == "__main__":
    main()
