#!/bin/bash
# round 28, the H100 call (the issues' device; none lent since round 5): default-launch kernel bench of the default
# keep rules (exact, word), the fp8 formats and the expanded fp16 formats at the issues' sizes, then the launch cost
# of the public op (eager against graph), and the graph and public-op GPU tests after the generation fixes
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv
b() { timeout $1 python3 scripts/bench_kernels.py --default-only --skip-compress --batches 1,8,32 --tokens 16384,32768 \
  --sparsities $2 --keep-rules $3 --out $OUT/$4 >> $OUT/log.txt 2>&1; grep "^| [a-z]" $OUT/$4/bench.md | grep -v "^| rule\|^| s " | cut -d'|' -f2-15; }
b 140 0.5,0.7 word,exact bench
b 120 0.5,0.7 nm8ck-fp8-nm4v,word-fp8 bench_fp8
b 100 0.5 nm8ck-nm4v,word-nm4v bench_fmt
timeout 90 python3 scripts/bench_launch.py --quick --out $OUT/launch >> $OUT/log.txt 2>&1
rm -f $OUT/launch/bench_launch.json; tail -n 14 $OUT/launch/bench_launch.md; tail -n 3 $OUT/log.txt
timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py >> $OUT/log.txt 2>&1
tail -n 2 $OUT/log.txt
