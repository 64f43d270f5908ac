#!/bin/bash
# round 35, third H100 call: the six GPU test files on the final tree (after the audit's fixes), then the end-to-end
# decode step of Llama-3-8B shapes with static caches and CUDA graphs, dense against K0.7 V0.7 `word` fp8 and fp16
# values, B 1 and 8 (round 29's command, results/decode/round29_h100/gpu6.sh, with three formats)
export PYTHONPATH=$PWD
timeout 240 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_launch_seq.py tests/kernels/test_gpu_graphs.py \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt; grep -m 20 "FAILED\|Error" $OUT/tests.txt
timeout 300 python3 scripts/bench_decode.py --formats dense-static,K0.7V0.7-word-static,K0.7V0.7-word-fp8-static \
  --batches 1,8 --steps 8 --out $OUT/decode > $OUT/decode_log.txt 2>&1
tail -n 12 $OUT/decode_log.txt; true
