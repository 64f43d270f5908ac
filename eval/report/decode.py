"""The paper's Table 14 (TTFT and decode tokens/s, dense vs Mustafar K0.5V0.5 / K0.7V0.7) next to our GPU
measurements: end-to-end from `scripts/bench_decode.py` (results/decode/*.json) where they exist, and the
attention-kernel-only benchmark from `scripts/bench_kernels.py` (the current kernel round's, `CURRENT_KERNEL_BENCH`).

The setups differ (the paper: RTX 6000 Ada, batch 1, decode 512/1024/2048 tokens; bench_decode: a fixed context
and the batches it was run at), so speeds are compared as speed-ups over dense within each setup.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from eval.report import paper

MODELS = {"llama3_8b": "Llama3", "llama2_7b": "Llama2"}  # bench_decode --model -> the paper's row name
FORMATS = {
    "dense": "Dense",
    "dense-prealloc": "Dense (preallocated cache)",
    "K0.5V0.5": "Mustafar K0.5 V0.5",
    "K0.7V0.7": "Mustafar K0.7 V0.7",
}
KEYS = ["model", "format"]


def paper_table() -> pd.DataFrame:
    spec = paper.numbers()["decode_speed"]
    rows = []
    for r in spec["rows"]:
        rows.append(
            {
                "model": r["model"],
                "format": r["format"],
                "paper TTFT s": r["ttft_s"],
                **{f"paper tok/s @{n}": v for n, v in r["tokens_per_s"].items()},
            }
        )
    table = pd.DataFrame(rows)
    dense = table[table["format"] == "Dense"].set_index("model")["paper tok/s @1024"]
    table["paper ×dense @1024"] = table["paper tok/s @1024"] / table["model"].map(dense)
    return table


def _rows(report: dict, source: str) -> list[dict]:
    """One row per format of one bench_decode report."""
    model = MODELS.get(report["model"], report["model"])
    by_fmt: dict[str, dict] = {}

    def row(fmt: str) -> dict:
        return by_fmt.setdefault(fmt, {"model": model, "format": FORMATS.get(fmt, fmt)})

    for fmt, seconds in report.get("ttft_s", {}).items():
        row(fmt)["ours TTFT s"] = seconds
    for p in report["points"]:
        r, b = row(p["fmt"]), p["batch"]
        r.setdefault("ours KV/dense", None if p["oom"] else p.get("kv_fraction_of_dense"))
        r[f"ours tok/s B{b}"] = None if p["oom"] else p["tokens_per_s"]
        if "gpu_tokens_per_s" in p:
            r[f"ours GPU tok/s B{b}"] = None if p["oom"] else p["gpu_tokens_per_s"]
    for fmt, mb in report.get("max_batch", {}).items():
        row(fmt)["ours max batch"] = mb["batch"]
        row(fmt)["ours tok/s max batch"] = mb["point"]["tokens_per_s"] if mb["point"] else None
    for r in by_fmt.values():
        r["ours setup"] = f"{report['device']}, context {report['context']}, {source}"
    return list(by_fmt.values())


def measured_table(decode_dir: Path) -> pd.DataFrame:
    """One row per (model, format) over every bench_decode JSON in `decode_dir`; empty when none exist.

    Per batch: wall-clock tokens/s and its speed-up over dense, and the speed-up in GPU time alone where the
    benchmark recorded it (at small batches the wall clock is dominated by Python launch overhead)."""
    rows = []
    for path in sorted(Path(decode_dir).glob("*.json")):
        report = json.loads(path.read_text())
        if "points" in report:
            rows += _rows(report, path.name)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # each run against its own dense row: several reports of one model (e.g. an earlier round kept beside the
    # latest) are separate setups, told apart by `ours setup`
    run = table["model"] + " | " + table["ours setup"]
    for column in [c for c in table.columns if "tok/s" in c]:
        dense = table[table["format"] == "Dense"].set_index(run[table["format"] == "Dense"])[column]
        table[column.replace("tok/s", "×dense")] = table[column] / run.map(dense)
    return table.drop(columns=[c for c in table.columns if c.startswith("ours GPU tok/s")])


def table14(decode_dir: Path) -> pd.DataFrame:
    """The paper's rows with ours joined on (model, format); ours-only rows are kept too."""
    ours = measured_table(decode_dir)
    if ours.empty:
        return paper_table()
    return paper_table().merge(ours, on=KEYS, how="outer")


# The kernel benchmark the paper-layout table shows, relative to the results directory: the newest default-launch
# run of the current decoders (results/kernels/NOTES.md names each round). Moved forward with each kernel round, so
# the table never shows a superseded kernel under today's name.
CURRENT_KERNEL_BENCH = Path("kernels/round35_h100/h100_4/bench/bench.json")


def kernel_table(bench: dict) -> pd.DataFrame:
    """Attention only (one layer's decode attention, Llama-3-8B shapes) from a loaded ``bench.json``: sparse kernel
    vs dense SDPA, one row per keep rule, sparsity, batch and context (files before the keep-rule field held the
    ``exact`` rule only)."""
    rows = [
        {
            "keep rule": p.get("keep_rule", "exact"),
            "s": p["sparsity"],
            "batch": p["batch"],
            "tokens": p["tokens"],
            "dense SDPA µs": p["dense_sdpa_us"],
            "sparse µs": p["sparse_us"],
            "×dense": p["speedup"],
            "×dense (CUDA graph)": p.get("speedup_graph"),
            "compressed / dense bytes": p["compressed_bytes"] / p["dense_bytes"],
        }
        for p in bench["decode"]
    ]
    return pd.DataFrame(rows).sort_values(
        ["keep rule", "s", "batch", "tokens"], kind="stable", ignore_index=True
    )
