#!/bin/bash
# round 30, third H100 call: the replayed launch plan (static stores). bench_launch B 1 host time, base tree
# (build/base = 282964c, carried) against this tree, alternating twice, then the five GPU test files.
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for i in 1 2; do for t in base plan; do
  if [ $t = base ]; then S=build/base/scripts; else S=scripts; fi
  timeout 100 python3 $S/bench_launch.py --quick --keep-rules word,word-fp8 --out $OUT/l >> $OUT/log.txt 2>&1
  grep "| 1 |\|| 8 |" $OUT/l/bench_launch.md | awk -F'|' -v t=$t -v i=$i '{print i, t, $2, $3, $4, $5, $6, $7, $8, $9, $10}' >> $OUT/ab.txt
  [ $i = 2 ] && [ $t = plan ] && cp $OUT/l/bench_launch.md $OUT/bench_launch_plan.md
  rm -rf $OUT/l
done; done
grep " 1 " $OUT/ab.txt | cut -c1-120
timeout 290 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py \
  tests/kernels/test_gpu_word.py tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py > $OUT/tests.txt 2>&1
tail -n 2 $OUT/tests.txt
