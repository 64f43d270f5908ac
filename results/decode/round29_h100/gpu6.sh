#!/bin/bash
# round 29, third H100 call: the five GPU test files on the final kernels (PDL merge), then the end-to-end decode
# step of Llama-3-8B shapes with static caches and CUDA graphs (dense, word s 0.5 / 0.7, word fp8 s 0.7), B 1 and 8
export PYTHONPATH=$PWD
timeout 250 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  tests/kernels/test_gpu_word.py tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt
timeout 290 python3 scripts/bench_decode.py --formats dense-static,K0.7V0.7-word-static,K0.5V0.5-word-static,K0.7V0.7-word-fp8-static \
  --batches 1,8 --steps 8 --out $OUT/decode > $OUT/decode_log.txt 2>&1
tail -n 14 $OUT/decode_log.txt
