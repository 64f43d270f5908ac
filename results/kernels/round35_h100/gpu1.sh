#!/bin/bash
# round 35, first H100 call: fp8 keys scored in fp16 (score_asm's packed fma per kept code, q scaled by a power of
# two). The six GPU test files on the candidate, then round 34's A/B (ab.py) against HEAD before the change
# (build/base = git archive of mustafar/ and scripts/ at f2f766e), two processes per tree, alternating.
R=results/kernels/round35_h100
export PYTHONPATH=$PWD
timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt
unset PYTHONPATH
for i in 1 2; do
  for tree in build/base .; do
    tag=$([ "$tree" = . ] && echo new || echo base)
    timeout 120 python3 results/kernels/round34_h100/ab.py $tree $tag >> $OUT/ab.jsonl 2>> $OUT/ab_err.txt
  done
done
tail -n 3 $OUT/ab_err.txt
python3 - <<'PY'
import json, os, statistics as st
rows = [json.loads(l) for l in open(os.environ["OUT"] + "/ab.jsonl")]
keys = sorted({(r["rule"], r["b"], r["t"]) for r in rows})
for k in keys:
    t = {tag: [r["us"] for r in rows if (r["rule"], r["b"], r["t"]) == k and r["tag"] == tag] for tag in ("base", "new")}
    if t["base"] and t["new"]:
        b, n = st.mean(t["base"]), st.mean(t["new"])
        d = [r["x"] for r in rows if (r["rule"], r["b"], r["t"]) == k and r["tag"] == "new"]
        print(k, f"base {b:.1f} new {n:.1f} gain {b / n - 1:+.1%} new x {min(d):.3f}-{max(d):.3f}")
PY
true
