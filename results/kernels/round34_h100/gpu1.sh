#!/bin/bash
# round 34, first H100 call: the round-34 tree (.) against round 33's (build/base: `git archive` of 709f3d3),
# two processes each, alternating (ab.py); then the scatter and fp8 GPU tests of the round-34 tree.
R=results/kernels/round34_h100
for i in 1 2; do
  for tree in build/base .; do
    tag=$([ "$tree" = . ] && echo new || echo base)
    timeout 150 python3 $R/ab.py $tree $tag >> $OUT/ab.jsonl 2>> $OUT/ab_err.txt
  done
done
tail -n 3 $OUT/ab_err.txt
export PYTHONPATH=$PWD
timeout 200 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  tests/kernels/test_gpu_word.py > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt; true
