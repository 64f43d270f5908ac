#!/bin/bash
# round 35, sixth H100 call: the six GPU test files after the op's one-time hint for pruned stores without word
# quotas (dispatch._hint_word_quotas; no kernel change since cbe4e1e), with the warnings summary kept.
export PYTHONPATH=$PWD
timeout 240 python3 -m pytest -q -n 8 -p no:cacheprovider -W "default::UserWarning" tests/kernels/test_launch_seq.py \
  tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py \
  tests/kernels/test_gpu_fp8.py > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt; grep -m 3 "no word quotas" $OUT/tests.txt; true
