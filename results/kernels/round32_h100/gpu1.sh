#!/bin/bash
# round 32, first H100 call: round 31's untested final code, this round's balanced split shares and lazy rescale
# and the fp8 top-code mend: the GPU tests (the new variants included), the A/B of both knobs, then bench_launch
# (round 31's gpu4.sh).
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 420 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt
timeout 300 python3 results/kernels/round32_h100/ab_round32.py > $OUT/ab.jsonl 2> $OUT/ab_err.txt
python3 -c "
import json
for l in open('$OUT/ab.jsonl'):
    r = json.loads(l); print(r['rule'], r['b'], r['t'], r['splits'], r['speedup'], r['gain_pct'])"
tail -n 3 $OUT/ab_err.txt
timeout 90 python3 scripts/bench_launch.py --quick --keep-rules word,word-fp8 --out $OUT/bench > $OUT/bench_log.txt 2>&1
grep "| 1 |" $OUT/bench/bench_launch.md | cut -c1-150; true
