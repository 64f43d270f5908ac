#!/bin/bash
# round 35, third H100 call: q's power of two per query head (both fp8 key paths) after the audit. The six GPU test
# files on the candidate, then round 34's A/B (ab.py) over three trees, alternating twice: build/base (f2f766e,
# round 34), build/r35a (1e79297, one scale per GQA group, the tree gpu1/gpu2 measured) and the candidate.
export PYTHONPATH=$PWD
timeout 240 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt
unset PYTHONPATH
for i in 1 2; do
  for tree in build/base build/r35a .; do
    tag=$([ "$tree" = . ] && echo head || basename $tree)
    timeout 100 python3 results/kernels/round34_h100/ab.py $tree $tag >> $OUT/ab.jsonl 2>> $OUT/ab_err.txt
  done
done
tail -n 3 $OUT/ab_err.txt
python3 - <<'PY'
import json, os, statistics as st
rows = [json.loads(l) for l in open(os.environ["OUT"] + "/ab.jsonl")]
for k in sorted({(r["rule"], r["b"], r["t"]) for r in rows}):
    m = {tag: st.mean([r["us"] for r in rows if (r["rule"], r["b"], r["t"]) == k and r["tag"] == tag] or [0])
         for tag in ("base", "r35a", "head")}
    x = [r["x"] for r in rows if (r["rule"], r["b"], r["t"]) == k and r["tag"] == "head"]
    print(k, " ".join(f"{t} {v:.1f}" for t, v in m.items()), f"head vs r35a {m['r35a'] / m['head'] - 1:+.1%}",
          f"head vs base {m['base'] / m['head'] - 1:+.1%}", f"head x {min(x):.3f}-{max(x):.3f}")
PY
true
