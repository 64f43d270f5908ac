#!/bin/bash
# round 30, last H100 call: the final tree's launch cost (bench_launch: eager vs graph vs dense, all keep rules),
# then the five GPU test files.
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
timeout 150 python3 scripts/bench_launch.py --quick --out $OUT/launch > $OUT/log.txt 2>&1
rm -f $OUT/launch/bench_launch.json; grep "| 1 |" $OUT/launch/bench_launch.md
timeout 330 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  tests/kernels/test_gpu_word.py tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt
