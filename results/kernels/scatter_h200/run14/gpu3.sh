#!/bin/bash
# round 25, third call: how bandwidth-bound is the fp8 K 4:8c + V 2:4 decoder? Timing-only hacks of the tree
# (build/noscale: the per-token scales not copied, 8 of 168 bytes per token-head; build/nobits: the bitmap words
# not copied, 32 of 168; both compute on whatever the staging ring holds) against the tree itself
export PYTHONPATH=$PWD
export AB_RULES=nm8ck-fp8-nm4v
ab() { timeout 90 python3 results/kernels/scatter_h200/run14/ab/ab4.py "$@" >> $OUT/ab3.jsonl 2>>$OUT/ab_err.txt; }
ab . tree
ab build/noscale noscale
ab build/nobits nobits
ab . tree2
cut -c1-150 $OUT/ab3.jsonl; tail -n 3 $OUT/ab_err.txt
