#!/bin/bash
# round 33, second H100 call: main after the tail plan was reverted (kernels byte-identical to round 32's) with this
# session's cache fixes: the GPU tests of the kernels and of compressed generation.
export PYTHONPATH=$PWD
timeout 420 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt; true
