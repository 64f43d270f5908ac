#!/bin/bash
# round 32, second H100 call: main after the two variants were reverted. The default-launch bench of the fp16 and
# fp8 word stores at s 0.7 beside round 29's (same command, fewer sizes), then the GPU tests of the kernels.
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
timeout 200 python3 scripts/bench_kernels.py --default-only --skip-compress --batches 8,16,32 --tokens 16384,32768 \
  --sparsities 0.7 --keep-rules word,word-fp8 --baseline results/kernels/round29_h100/final/bench/bench.json \
  --out $OUT/bench > $OUT/bench_log.txt 2>&1
tail -n 30 $OUT/bench/bench.md | cut -c1-200
timeout 330 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt; true
