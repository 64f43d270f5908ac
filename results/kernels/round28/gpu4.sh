#!/bin/bash
# round 28, last call (H200; no H100 came in ten tries): the graph GPU tests after the generation fixes (static
# reset under inference mode, caller's static cache checks)
export PYTHONPATH=$PWD
timeout 130 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_graphs.py > $OUT/tests_graphs.txt 2>&1
tail -n 2 $OUT/tests_graphs.txt
