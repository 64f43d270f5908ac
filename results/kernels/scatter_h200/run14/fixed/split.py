"""kernel_times.jsonl -> split.txt: each kernel's device time at 16K and 32K tokens split into a part per call and
a part per 16K tokens (two lengths, same launch), and what the graph-replayed call adds on top of its kernels.

    python results/kernels/scatter_h200/run14/fixed/split.py
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
rows = [json.loads(line) for line in open(HERE / "kernel_times.jsonl") if '"kernels"' in line]
at = {(r["what"], r["b"], r["t"]): r for r in rows}
lines = []
for what in ("dense", "nm8ck-fp8-nm4v", "word"):
    for b in (8, 32):
        short, long_ = at[what, b, 16384], at[what, b, 32768]
        main = max(short["kernels"], key=short["kernels"].get)  # the attention kernel; the rest: merge/reduce
        per16k = long_["kernels"][main] - short["kernels"][main]
        fixed = short["kernels"][main] - per16k
        second = {k: v for k, v in short["kernels"].items() if k != main}
        over = short["graph_us"] - sum(short["kernels"].values())
        tiny = at[what, b, 64]
        lines.append(
            f"{what:15s} B {b:2d}: kernel {fixed:5.1f} µs + {per16k:6.1f} per 16K; second kernel "
            f"{sum(second.values()):4.1f} µs; graph call over its kernels {over:3.1f} µs; at 64 tokens: kernels "
            f"{sum(tiny['kernels'].values()):4.1f}, graph {tiny['graph_us']:4.1f}"
        )
for what in ("nm8ck-fp8-nm4v", "word"):
    for b in (8, 32):
        d = [at["dense", b, t]["kernels"] for t in (16384, 32768)]
        s = [at[what, b, t]["kernels"] for t in (16384, 32768)]
        dk = max(d[0], key=d[0].get)
        sk = max(s[0], key=s[0].get)
        ratio = (d[1][dk] - d[0][dk]) / (s[1][sk] - s[0][sk])
        lines.append(f"per-token ratio of the kernels, {what} B {b}: {ratio:.2f}x dense")
(HERE / "split.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
