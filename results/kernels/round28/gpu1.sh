#!/bin/bash
# round 28, first H100 call since round 5: the default-launch kernel bench of the two default keep rules (exact:
# staged decoder; word: scatter decoder) and of the fp8 formats at the issues' sizes, then the five GPU test files
# on main (the kernel-API checks of the last three device-less sessions were never GPU-run)
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv > $OUT/device.txt; cat $OUT/device.txt
timeout 170 python3 scripts/bench_kernels.py --default-only --skip-compress --batches 1,8,32 --tokens 16384,32768 \
  --keep-rules word,exact --out $OUT/bench >> $OUT/log.txt 2>&1
grep "^| \(word\|exact\)" $OUT/bench/bench.md | cut -d'|' -f2-15; tail -n 2 $OUT/log.txt
timeout 150 python3 scripts/bench_kernels.py --default-only --skip-compress --batches 1,8,32 --tokens 16384,32768 \
  --sparsities 0.5,0.7 --keep-rules nm8ck-fp8-nm4v,word-fp8 --out $OUT/bench_fp8 >> $OUT/log.txt 2>&1
grep "^| \(word\|nm\)" $OUT/bench_fp8/bench.md | cut -d'|' -f2-15; tail -n 2 $OUT/log.txt
timeout 240 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  tests/kernels/test_gpu_word.py tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py > $OUT/tests.txt 2>&1
tail -n 3 $OUT/tests.txt
