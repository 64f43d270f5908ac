#!/bin/bash
# round 34, second H100 call: the tree without the lane-order scatter (reverted after gpu1.sh) against round 33's
# (build/base), two processes each, alternating; the six GPU test files; the default-launch bench (round 32's command).
R=results/kernels/round34_h100
for i in 1 2; do
  for tree in build/base .; do
    tag=$([ "$tree" = . ] && echo new || echo base)
    timeout 150 python3 $R/ab.py $tree $tag >> $OUT/ab.jsonl 2>> $OUT/ab_err.txt
  done
done
tail -n 3 $OUT/ab_err.txt
export PYTHONPATH=$PWD
timeout 260 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt
timeout 200 python3 scripts/bench_kernels.py --default-only --skip-compress --batches 8,16,32 --tokens 16384,32768 \
  --sparsities 0.7 --keep-rules word,word-fp8 --baseline results/kernels/round29_h100/final/bench/bench.json \
  --out $OUT/bench > $OUT/bench_log.txt 2>&1
tail -n 3 $OUT/bench_log.txt; true
