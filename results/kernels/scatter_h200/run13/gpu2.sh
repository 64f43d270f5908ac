#!/bin/bash
# round 24, second call: kernel bench of the fp8 expanded-value formats (values now in the P·V operand) and the
# end-to-end decode bench, on the merged tree (VALUES_IN_OPERAND = {fp8})
git rev-parse HEAD > $OUT/tree.txt 2>/dev/null
timeout 330 python3 scripts/bench_kernels.py --out $OUT/k --default-only --skip-compress --batches 1,8,32 \
  --tokens 16384,32768 --sparsities 0.5,0.6875 \
  --keep-rules nm8ck-fp8-nm4v,nm8sk-fp8-nm4v,word-fp8-nm4v,nm16ck-fp8-nm16v > $OUT/k.log 2>&1
tail -n 30 $OUT/k.log
timeout 240 python3 scripts/bench_decode.py --quick \
  --formats dense-static,K0.5V0.5-nm8ck-fp8-nm4v-static,K0.6875V0.6875-nm16ck-fp8-nm16v-static --out $OUT/e > $OUT/e.log 2>&1
tail -n 20 $OUT/e.log
