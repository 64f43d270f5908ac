#!/bin/bash
# round 28, second H100 call: the fp16 expanded formats and 5:16 fp8, the launch cost of the public op (eager against
# graph), then the end-to-end decode step
export PYTHONPATH=$PWD
timeout 200 python3 scripts/bench_kernels.py --default-only --skip-compress --batches 1,8,32 --tokens 16384,32768 \
  --sparsities 0.5,0.6875 --keep-rules word-nm4v,nm8ck-nm4v,nm16ck-fp8-nm16v --out $OUT/bench_fmt >> $OUT/log.txt 2>&1
grep "^| \(word\|nm\)" $OUT/bench_fmt/bench.md | cut -d'|' -f2-15; tail -n 2 $OUT/log.txt
timeout 120 python3 scripts/bench_launch.py --quick --out $OUT/launch >> $OUT/log.txt 2>&1
tail -n 20 $OUT/launch/bench_launch.md; tail -n 2 $OUT/log.txt
timeout 200 python3 scripts/bench_decode.py --quick --formats dense-static,K0.7V0.7-word-static,K0.5V0.5-nm8ck-fp8-nm4v-static \
  --out $OUT/e2e >> $OUT/log.txt 2>&1
tail -n 12 $OUT/e2e/bench_decode.md; tail -n 2 $OUT/log.txt
