#!/bin/bash
# round 25, second call: the scatter GPU tests on the tree (selector-table entry in two instructions), its A/B
# against 53cef7c (build/base) on the two expanded fp8 formats, then where a call's time goes (kernel_times.py)
export PYTHONPATH=$PWD
timeout 200 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_scatter.py > $OUT/tests_scatter.txt 2>&1
tail -n 2 $OUT/tests_scatter.txt
export AB_RULES=nm16ck-fp8-nm16v,nm8ck-fp8-nm4v
ab() { timeout 90 python3 results/kernels/scatter_h200/run14/ab/ab4.py "$@" >> $OUT/ab2.jsonl 2>>$OUT/ab_err.txt; }
ab build/base base
ab . table
ab build/base base2
ab . table2
cut -c1-160 $OUT/ab2.jsonl; tail -n 3 $OUT/ab_err.txt
timeout 240 python3 results/kernels/scatter_h200/run14/fixed/kernel_times.py > $OUT/kernel_times.jsonl 2> $OUT/kt_err.txt
cat $OUT/kernel_times.jsonl; tail -n 5 $OUT/kt_err.txt
