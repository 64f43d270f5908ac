"""Accuracy vs bytes per token for the eviction experiment (experiments/eviction/README.md).

Reads every job of a sweep folder (``<job>/result.json``, or ``jobs/<job>.json`` as results/paper commits them) and
prints one row per policy: the task scores with their 95% bootstrap CIs, the measured kept token fraction (cached /
(cached + evicted) tokens), and the KV size as a fraction of the full dense fp16 cache: the per-token bitmap
format's bytes (docs/formats.md §2; fp16 values, or fp8 for `kv.value_dtype=fp8` jobs) of the tokens that were
pruned, plus dense bytes for the cached tokens that were not (the window, decode tokens still in it), over the dense
bytes of every token seen (evicted ones included). Counts are the measured ones the rows carry (`k_judged`,
`v_judged`, `dense_kv_bytes`, `kv_evicted_bytes`; mask mode stores zeros, so the bytes follow from them; compressed
jobs' stores give the same counts). Then the paired differences of the equal-byte pairs named on the command line
(A=B, same prompts). `avg` and the pairs are the tables' `avg` (eval.averages: a LongBench job's English tasks).

python scripts/eviction_table.py results/eviction "snapkv1493 K0.5 V0.5=K0.7 V0.7" "snapkv1080=K0.5 V0.5"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is no package: its paired_compare.py

from paired_compare import average_weights, paired_or_refuse, refuse, task_rows  # noqa: E402

from eval.stats import Paired, bootstrap_ci, weighted_mean  # noqa: E402
from mustafar.formats.bitmap import fixed_token_nbytes  # noqa: E402
from mustafar.pruning.keep import exact_keep  # noqa: E402

FP16 = 2


def _job(path: Path) -> dict:
    rows = task_rows(json.loads(path.read_text())["rows"])
    first = rows[0]
    if first.get("k_judged") is None:
        refuse(
            f"{path}: its rows carry no k_judged/v_judged counts (written before they were recorded); re-run the job"
        )
    d, itemsize = first["head_dim"], 4 if first["dtype"] == "float32" else 2
    judged = {side: first[f"{side}_judged"] // d for side in ("k", "v")}  # token-heads summed over layers
    cached = first["dense_kv_bytes"] // (d * itemsize * 2)
    evicted = first["kv_evicted_bytes"] // (d * itemsize * 2)
    dense_side = d * FP16
    samples = {r["task"]: r["samples"] for r in rows}
    size = 0
    value_dtype = first.get("value_dtype", "native")  # fp8: the pruned tokens in the fp8 layout
    for side in ("k", "v"):
        s = first[f"{side}_sparsity"]
        per_token = fixed_token_nbytes(d, exact_keep(d, s), FP16, value_dtype) if s > 0 else dense_side
        size += judged[side] * per_token + (cached - judged[side]) * dense_side
    return {
        "policy": first["policy"],
        "path": path,
        "samples_id": first.get("samples_id"),
        "samples": samples,
        "avg": average_weights(str(path), first["benchmark"], samples),  # the tables' avg: its task weights
        "kept_tokens": cached / (cached + evicted),
        "kv_size": size / (2 * dense_side * (cached + evicted)),
    }


def _result_files(sweep: Path) -> list[Path]:
    files = sorted(sweep.glob("*/result.json")) + sorted(sweep.glob("jobs/*.json"))
    if not files:
        refuse(f"no result.json under {sweep} (nor jobs/*.json)")
    return files


def _load(sweep: Path) -> dict[str, dict]:
    """{policy: job} of the sweep folder; one row per policy, so two jobs of one label are refused."""
    jobs: dict[str, dict] = {}
    for f in _result_files(sweep):
        j = _job(f)
        if j["policy"] in jobs:
            refuse(f"two jobs of policy {j['policy']!r}: {jobs[j['policy']]['path']} and {f}")
        jobs[j["policy"]] = j
    return jobs


def _check_same_tasks(jobs: dict[str, dict]) -> None:
    """Refuse jobs of different task lists: their averages (and pairs) would be over different tasks."""
    first, *rest = jobs.values()
    for j in rest:
        if set(j["samples"]) != set(first["samples"]):
            refuse(
                f"{first['path']} and {j['path']} ran different tasks ({', '.join(sorted(first['samples']))} vs "
                f"{', '.join(sorted(j['samples']))}): give a folder of jobs of one task list"
            )


def _pair(pair: str, jobs: dict[str, dict]) -> tuple[str, str, Paired]:
    """(A, B, A − B) of an "A=B" argument, refused when it is no A=B, names no job, or its jobs were not asked the
    same prompts (paired_compare.py's rule)."""
    if pair.count("=") != 1:
        refuse(f"pair {pair!r} is not A=B (two policy labels joined by one '=')")
    a, b = pair.split("=")
    for label in (a, b):
        if label not in jobs:
            refuse(
                f"pair {pair!r}: no job of policy {label!r} (policies: {', '.join(map(repr, sorted(jobs)))})"
            )
    ja, jb = jobs[a], jobs[b]
    name_a, name_b = f"{a!r} ({ja['path']})", f"{b!r} ({jb['path']})"
    p = paired_or_refuse(
        name_a, ja["samples_id"], ja["samples"], name_b, jb["samples_id"], jb["samples"], ja["avg"]
    )
    return a, b, p


def _print_table(jobs: dict[str, dict]) -> None:
    tasks = sorted({t for j in jobs.values() for t in j["samples"]})
    print("| policy | " + " | ".join(tasks) + " | avg | n/task | kept tokens | KV size / dense |")
    print("|---" * (len(tasks) + 5) + "|")
    for name, j in sorted(jobs.items(), key=lambda kv: -kv[1]["kv_size"]):
        cells = []
        for t in tasks:
            s = j["samples"][t]
            lo, hi = bootstrap_ci({t: s})
            cells.append(f"{sum(s) / len(s):.1f} [{lo:.1f}, {hi:.1f}]")
        lo, hi = bootstrap_ci(j["samples"], j["avg"])
        avg = weighted_mean(j["samples"], j["avg"])
        n = min(len(s) for s in j["samples"].values())
        print(
            f"| {name} | " + " | ".join(cells) + f" | {avg:.1f} [{lo:.1f}, {hi:.1f}] | {n} | "
            f"{j['kept_tokens']:.3f} | {j['kv_size']:.3f} |"
        )


def main(sweep: str, pairs: list[str]) -> None:
    jobs = _load(Path(sweep))
    _check_same_tasks(jobs)
    tested = [_pair(pair, jobs) for pair in pairs]  # every refusal before any output
    _print_table(jobs)
    for a, b, p in tested:
        print(
            f"\n{a} − {b}: {p.diff:+.1f} [{p.low:+.1f}, {p.high:+.1f}] points, "
            f"p = {p.p_value:.3f}, {'within noise' if p.within_noise else 'a real difference'} (n = {p.n})"
        )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="a sweep folder (its <job>/result.json or jobs/<job>.json)")
    ap.add_argument("pairs", nargs="*", help='equal-byte pairs to compare, "A=B" by policy label')
    args = ap.parse_args()
    main(args.sweep, args.pairs)
