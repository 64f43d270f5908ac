#!/bin/bash
# round 33, second H100 call: the GPU tests of the kernels with the tail plan on (pytest plugin tail_on.py).
export PYTHONPATH=$PWD:$PWD/results/kernels/round33_h100
timeout 400 python3 -m pytest -q -n 8 -p no:cacheprovider -p tail_on tests/kernels/test_launch_seq.py \
  tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py \
  tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt; true
