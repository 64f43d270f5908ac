#!/bin/bash
# round 31, first H100 call: the one-call launch sequence and the direct prune+pack launches. The launch sequence's
# test against Triton's generated launcher (stand-in driver) on the device's Triton; the host breakdown, base tree
# (build/base = e39d8dd, carried) against this tree, alternating twice; bench_launch on this tree; the GPU tests.
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_launch_seq.py > $OUT/test_launch_seq.txt 2>&1
tail -n 1 $OUT/test_launch_seq.txt
for i in 1 2; do for t in build/base .; do
  timeout 100 python3 results/kernels/round31_h100/host/breakdown.py $t >> $OUT/breakdown.jsonl 2>> $OUT/breakdown.err
done; done
cat $OUT/breakdown.jsonl; tail -n 5 $OUT/breakdown.err
timeout 100 python3 scripts/bench_launch.py --quick --keep-rules word,word-fp8 --out $OUT/bench > $OUT/bench_log.txt 2>&1
grep "| 1 |" $OUT/bench/bench_launch.md | cut -c1-150
timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py \
  tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt
