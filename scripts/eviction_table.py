"""Accuracy vs bytes per token for the eviction experiment (experiments/eviction/README.md).

Reads every job of a sweep folder (``<job>/result.json``, or ``jobs/<job>.json`` as results/paper commits them) and
prints one row per policy: the task scores with their 95% bootstrap CIs, the measured kept token fraction (cached /
(cached + evicted) tokens), and the KV size as a fraction of the full dense fp16 cache: the per-token bitmap
format's bytes (docs/formats.md §2; fp16 values, or fp8 for `kv.value_dtype=fp8` jobs) of the tokens that were
pruned, plus dense bytes for the cached tokens that were not (the window, decode tokens still in it), over the dense
bytes of every token seen (evicted ones included). Counts are the measured ones the rows carry (`k_judged`,
`v_judged`, `dense_kv_bytes`, `kv_evicted_bytes`; mask mode stores zeros, so the bytes follow from them; compressed
jobs' stores give the same counts). Then the paired differences of the equal-byte pairs named on the command line
(A=B, same prompts).

python scripts/eviction_table.py results/eviction "snapkv1493 K0.5 V0.5=K0.7 V0.7" "snapkv1080=K0.5 V0.5"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.stats import bootstrap_ci, paired_test  # noqa: E402
from mustafar.formats.bitmap import fixed_token_nbytes  # noqa: E402
from mustafar.pruning.keep import exact_keep  # noqa: E402

FP16 = 2


def _job(path: Path) -> dict:
    rows = [r for r in json.loads(path.read_text())["rows"] if r["kind"] == "task"]
    first = rows[0]
    if first.get("k_judged") is None:
        raise SystemExit(
            f"{path}: its rows carry no k_judged/v_judged counts (written before they were recorded); re-run the job"
        )
    d, itemsize = first["head_dim"], 4 if first["dtype"] == "float32" else 2
    judged = {side: first[f"{side}_judged"] // d for side in ("k", "v")}  # token-heads summed over layers
    cached = first["dense_kv_bytes"] // (d * itemsize * 2)
    evicted = first["kv_evicted_bytes"] // (d * itemsize * 2)
    dense_side = d * FP16
    size = 0
    value_dtype = first.get("value_dtype", "native")  # fp8: the pruned tokens in the fp8 layout
    for side in ("k", "v"):
        s = first[f"{side}_sparsity"]
        per_token = fixed_token_nbytes(d, exact_keep(d, s), FP16, value_dtype) if s > 0 else dense_side
        size += judged[side] * per_token + (cached - judged[side]) * dense_side
    return {
        "policy": first["policy"],
        "samples": {r["task"]: r["samples"] for r in rows},
        "kept_tokens": cached / (cached + evicted),
        "kv_size": size / (2 * dense_side * (cached + evicted)),
    }


def _result_files(sweep: Path) -> list[Path]:
    files = sorted(sweep.glob("*/result.json")) + sorted(sweep.glob("jobs/*.json"))
    if not files:
        raise SystemExit(f"no result.json under {sweep} (nor jobs/*.json)")
    return files


def main(sweep: str, pairs: list[str]) -> None:
    jobs, source = {}, {}
    for f in _result_files(Path(sweep)):
        j = _job(f)
        if j["policy"] in jobs:  # one row per policy: two jobs of one label would collapse into it
            raise SystemExit(f"two jobs of policy {j['policy']!r}: {source[j['policy']]} and {f}")
        jobs[j["policy"]], source[j["policy"]] = j, f
    tasks = sorted({t for j in jobs.values() for t in j["samples"]})
    print("| policy | " + " | ".join(tasks) + " | avg | n/task | kept tokens | KV size / dense |")
    print("|---" * (len(tasks) + 5) + "|")
    for name, j in sorted(jobs.items(), key=lambda kv: -kv[1]["kv_size"]):
        cells = []
        for t in tasks:
            s = j["samples"][t]
            lo, hi = bootstrap_ci({t: s})
            cells.append(f"{sum(s) / len(s):.1f} [{lo:.1f}, {hi:.1f}]")
        lo, hi = bootstrap_ci(j["samples"])
        avg = sum(sum(s) / len(s) for s in j["samples"].values()) / len(j["samples"])
        n = min(len(s) for s in j["samples"].values())
        print(
            f"| {name} | " + " | ".join(cells) + f" | {avg:.1f} [{lo:.1f}, {hi:.1f}] | {n} | "
            f"{j['kept_tokens']:.3f} | {j['kv_size']:.3f} |"
        )
    for pair in pairs:
        a, b = pair.split("=")
        if a in jobs and b in jobs:
            p = paired_test(jobs[a]["samples"], jobs[b]["samples"])
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
