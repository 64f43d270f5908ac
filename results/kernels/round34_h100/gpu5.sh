#!/bin/bash
# round 34, fifth H100 call: the default-launch bench of the kept tree (gpu4.sh's), round 32's command.
timeout 280 python3 scripts/bench_kernels.py --default-only --skip-compress --batches 8,16,32 --tokens 16384,32768 \
  --sparsities 0.7 --keep-rules word,word-fp8 --baseline results/kernels/round29_h100/final/bench/bench.json \
  --out $OUT/bench > $OUT/bench_log.txt 2>&1
grep "word-fp8 | 0.7 | 8 | 16384" $OUT/bench/bench.md; tail -n 2 $OUT/bench_log.txt; true
