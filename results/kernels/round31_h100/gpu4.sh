#!/bin/bash
# round 31, last H100 call: the final code (plain pack launch cached per layout, plans holding their stores' buffers):
# the launch sequence's test and the GPU tests, then bench_launch.
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt
timeout 90 python3 scripts/bench_launch.py --quick --keep-rules word,word-fp8 --out $OUT/bench > $OUT/bench_log.txt 2>&1
grep "| 1 |" $OUT/bench/bench_launch.md | cut -c1-150; true
