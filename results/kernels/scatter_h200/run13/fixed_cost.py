"""Round 24: each decoder's per-call time split into a fixed part and a part per 16K tokens, from two lengths of
the same launch (same split count): T(16K) = fixed + per16K, T(32K) = fixed + 2·per16K, graph-replayed, for the
sparse op and dense SDPA at each batch. The ratio of the per-token parts is the speed-up the current per-tile
cost tends to at long contexts. python results/kernels/scatter_h200/run13/fixed_cost.py [bench.json ...]"""

import json
import sys
from pathlib import Path

here = Path(__file__).parent
for path in sys.argv[1:] or [here / "swizzle" / "bench.json", here / "bench.json"]:
    print(f"== {Path(path).relative_to(Path.cwd()) if Path(path).is_absolute() else path}")
    by: dict = {}
    for r in json.loads(Path(path).read_text())["decode"]:
        by.setdefault((r["keep_rule"], r["sparsity"], r["batch"]), {})[r["tokens"]] = r
    for (rule, sp, b), v in sorted(by.items()):
        if {16384, 32768} <= set(v) and v[16384]["num_splits"] == v[32768]["num_splits"]:
            s1, s2 = v[16384]["sparse_graph_us"], v[32768]["sparse_graph_us"]
            d1, d2 = v[16384]["dense_graph_us"], v[32768]["dense_graph_us"]
            ks, kd = s2 - s1, d2 - d1
            print(
                f"{rule:18s} s {sp:<6} B {b:<3d} splits {v[16384]['num_splits']:<4d} sparse fixed {s1 - ks:5.1f} µs + "
                f"{ks:6.1f} per 16K | dense fixed {d1 - kd:5.1f} + {kd:6.1f} | per-token ratio {kd / ks:.2f}×"
            )
