#!/bin/bash
# round 35, fifth H100 call: the default-launch bench in bf16 (Llama-3's dtype), `word` fp16-value and fp8 formats
# at s 0.7 and 0.5, B 1 / 8 / 32, 16-32K: the fp8 walk's gain is largest there (bf16 q took one more conversion).
timeout 300 python3 scripts/bench_kernels.py --default-only --skip-compress --dtype bf16 --batches 1,8,32 \
  --tokens 16384,32768 --sparsities 0.5,0.7 --keep-rules word,word-fp8 --out $OUT/bench_bf16 > $OUT/bench_log.txt 2>&1
grep "word-fp8 |" $OUT/bench_bf16/bench.md | cut -c1-110; tail -n 2 $OUT/bench_log.txt; true
