#!/bin/bash
# round 35, second H100 call: round 30's full default-launch bench command on the candidate (fp8 keys scored in
# fp16), so the paper-layout kernel table (eval/report/decode.py's CURRENT_KERNEL_BENCH) shows the current kernels.
timeout 450 python3 scripts/bench_kernels.py --default-only --skip-compress --batches 1,8,32 --tokens 16384,32768 \
  --sparsities 0.5,0.7 --keep-rules word,word-fp8,nm8ck-fp8-nm4v --out $OUT/bench > $OUT/bench_log.txt 2>&1
grep "word-fp8 |" $OUT/bench/bench.md; tail -n 2 $OUT/bench_log.txt; true
