#!/bin/bash
# round 24, fifth call: the five GPU test files on the final tree (fragment swizzle + the public op's cached
# decoder choice), the host-cost probe and bench_launch after the cache
export PYTHONPATH=$PWD
timeout 100 python3 results/kernels/scatter_h200/run13/host/host_probe.py > $OUT/host_probe_after.txt 2>&1
head -4 $OUT/host_probe_after.txt
timeout 110 python3 scripts/bench_launch.py --quick --out $OUT/launch > $OUT/launch.log 2>&1
tail -n 30 $OUT/launch.log | cut -c1-220
F="tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py"
timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider $F > $OUT/tests_gpu.txt 2>&1
tail -n 3 $OUT/tests_gpu.txt
