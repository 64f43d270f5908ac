#!/bin/bash
# session 31 first call: GPU tests main + branch concurrently, then A/B
F="tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py tests/kernels/test_gpu_word.py tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $OUT/device.txt
git rev-parse HEAD >> $OUT/device.txt 2>/dev/null
( timeout 380 python3 -m pytest -q -n 5 -p no:cacheprovider $F > $OUT/tests_main.txt 2>&1; echo "rc $?" >> $OUT/tests_main.txt ) &
( cd build/branch && PYTHONPATH=$PWD timeout 380 python3 -m pytest -q -n 5 -p no:cacheprovider $F > $OUT/tests_branch.txt 2>&1; echo "rc $?" >> $OUT/tests_branch.txt ) &
wait
tail -3 $OUT/tests_main.txt $OUT/tests_branch.txt
export AB_CASES=nm8skfp8:0.5,nm8sk:0.5
timeout 100 python3 results/kernels/scatter_h200/run6/ab/ab3.py . main > $OUT/ab.jsonl 2>$OUT/ab_err.txt
timeout 100 python3 results/kernels/scatter_h200/run6/ab/ab3.py build/branch vop >> $OUT/ab.jsonl 2>>$OUT/ab_err.txt
cd build/branch && export PYTHONPATH=$PWD && timeout 60 python3 results/kernels/scatter_h200/run12/ab/ab_nm16.py vop16 8 1 >> $OUT/ab.jsonl 2>>$OUT/ab_err.txt
timeout 60 python3 results/kernels/scatter_h200/run12/ab/ab_nm16.py tile16 8 0 >> $OUT/ab.jsonl 2>>$OUT/ab_err.txt
cat $OUT/ab.jsonl; tail -20 $OUT/ab_err.txt
