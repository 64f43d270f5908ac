#!/bin/bash
# round 35, seventh H100 call: the six GPU test files on the stop's last code (the static compressed cache's prompt
# packing moved into its own method; the kernels as in cbe4e1e).
export PYTHONPATH=$PWD
timeout 260 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt; true
