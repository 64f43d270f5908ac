#!/bin/bash
# round 34, fourth H100 call: the changes that leave the loop's control flow alone (the ring rotation, the folded
# scales, the hoisted shared base; no issue branch, no lane order) against round 33's tree (build/base), two
# processes each, alternating; then the six GPU test files.
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
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt; true
