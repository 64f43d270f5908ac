#!/bin/bash
# round 29, second H100 call: the merge as a programmatic dependent launch (PDL). GPU tests of the new tree, then an
# A/B of graph-replayed default launches, base tree (build/base = 59f42a3, carried) against this tree, alternating
# build/base, made here before the call: mkdir -p build/base && git archive 59f42a3 mustafar scripts | tar -x -C build/base
export PYTHONPATH=$PWD
D=results/kernels/scatter_h200/run14/ab  # the round-25 A/B driver (ab4.py), unchanged
timeout 200 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  tests/kernels/test_gpu_word.py tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt
export AB_RULES=word,word-fp8,nm8ck-fp8-nm4v AB_SIZES=8:16384,8:32768,32:32768,1:32768
for i in 1 2; do
  timeout 75 python3 $D/ab4.py build/base base >> $OUT/ab.jsonl 2>>$OUT/ab_err.txt
  timeout 75 python3 $D/ab4.py . pdl >> $OUT/ab.jsonl 2>>$OUT/ab_err.txt
done
tail -n 3 $OUT/ab_err.txt
python3 - <<'PY'
import json, os, statistics as st
rows = [json.loads(l) for l in open(os.environ["OUT"] + "/ab.jsonl")]
for key in sorted({(r["rule"], r["b"], r["t"]) for r in rows}):
    by = {tag: [r["us"] for r in rows if (r["rule"], r["b"], r["t"]) == key and r["tag"] == tag] for tag in ("base", "pdl")}
    d = [r["dense"] for r in rows if (r["rule"], r["b"], r["t"]) == key]
    print(key, "dense", min(d), {k: v for k, v in by.items()}, "x", [round(min(d) / min(v), 3) for v in by.values() if v])
PY
