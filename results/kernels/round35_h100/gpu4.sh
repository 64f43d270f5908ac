#!/bin/bash
# round 35, fourth H100 call: on the final tree (per-head q scales), round 30's full default-launch bench command
# (the paper-layout kernel table's source), then the end-to-end decode step of Llama-3-8B shapes with static caches
# and CUDA graphs, dense against K0.7 V0.7 `word` with fp16 and fp8 values, B 1 and 8 (round 29's command,
# results/decode/round29_h100/gpu6.sh, with three formats)
timeout 200 python3 scripts/bench_kernels.py --default-only --skip-compress --batches 1,8,32 --tokens 16384,32768 \
  --sparsities 0.5,0.7 --keep-rules word,word-fp8,nm8ck-fp8-nm4v --out $OUT/bench > $OUT/bench_log.txt 2>&1
grep "word-fp8 | 0.7 |" $OUT/bench/bench.md | cut -c1-110
timeout 330 python3 scripts/bench_decode.py --formats dense-static,K0.7V0.7-word-static,K0.7V0.7-word-fp8-static \
  --batches 1,8 --steps 8 --out $OUT/decode > $OUT/decode_log.txt 2>&1
tail -n 12 $OUT/decode_log.txt; true
