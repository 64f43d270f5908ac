#!/bin/bash
# round 33, first H100 call: the tail-aware split plan against the old wave model (A/B), then the GPU tests of the
# kernels with the new plan as the default.
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
timeout 300 python3 results/kernels/round33_h100/ab_tail.py > $OUT/ab.jsonl 2> $OUT/ab.err
echo "ab rc=$?"; tail -n 3 $OUT/ab.err
python3 - <<'PY'
import json, os
for l in open(os.environ["OUT"] + "/ab.jsonl"):
    r = json.loads(l)
    if "same" in r: print(r["rule"], r["b"], r["t"], "same", r["same"]); continue
    print(r["rule"], r["b"], r["t"], "old", r["old"], "new", r["new"], "gain%", r["gain_pct"], "x", r["speedup"], "err", r["max_abs_diff"])
PY
timeout 270 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt; true
