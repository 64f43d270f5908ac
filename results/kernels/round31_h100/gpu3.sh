#!/bin/bash
# round 31, third H100 call: launch sequences for dynamic stores too, host-side cdiv. The launch sequence's test and
# the GPU tests; host breakdown 2 (base tree e39d8dd in build/base against this tree, twice); bench_launch.
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt
for i in 1 2; do for t in build/base .; do
  timeout 100 python3 results/kernels/round31_h100/host/breakdown2.py $t >> $OUT/breakdown2.jsonl 2>> $OUT/breakdown2.err
done; done
cat $OUT/breakdown2.jsonl; tail -n 5 $OUT/breakdown2.err
timeout 100 python3 scripts/bench_launch.py --quick --keep-rules word,word-fp8 --out $OUT/bench > $OUT/bench_log.txt 2>&1
grep "| 1 |" $OUT/bench/bench_launch.md | cut -c1-150; true
