#!/bin/bash
# round 33, first H100 call: the tail-aware split plan against round 3's wave model (A/B, alternating in one
# process), then the default-launch bench with the tail plan on at issue 16's sizes.
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
timeout 400 python3 results/kernels/round33_h100/ab_tail.py > $OUT/ab.jsonl 2> $OUT/ab.err
echo "ab rc=$?"; tail -n 3 $OUT/ab.err
python3 - <<'PY'
import json, os
for l in open(os.environ["OUT"] + "/ab.jsonl"):
    r = json.loads(l)
    if "same" in r: print(r["rule"], r["b"], r["t"], "same", r["same"]); continue
    print(r["rule"], r["b"], r["t"], "old", r["old"], "new", r["new"], "gain%", r["gain_pct"], "x", r["speedup"], "err", r["max_abs_diff"])
PY
timeout 150 python3 results/kernels/round33_h100/bench_tail.py --default-only --skip-compress --batches 8,32 \
  --tokens 16384,32768 --sparsities 0.7 --keep-rules word-fp8,word --out $OUT/bench_tail > $OUT/bench_log.txt 2>&1
echo "bench rc=$?"; tail -n 12 $OUT/bench_tail/bench.md | cut -c1-220
