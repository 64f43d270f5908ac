#!/bin/bash
# round 30, first H100 call: the eager op's host time, base tree (build/base = 282964c, carried) against this tree
# (pointers passed to the C launch functions as ints, leaner checks): the host probe twice each, alternating, then
# bench_launch (eager vs graph vs dense) for both trees.
# build/base, made here before the call: mkdir -p build/base && git archive 282964c mustafar scripts | tar -x -C build/base
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
P=results/kernels/round30_h100/host/host_probe.py
for i in 1 2; do
  timeout 80 python3 $P build/base base >> $OUT/host.jsonl 2>>$OUT/err.txt
  timeout 80 python3 $P . new >> $OUT/host.jsonl 2>>$OUT/err.txt
done
cat $OUT/host.jsonl
timeout 110 python3 build/base/scripts/bench_launch.py --quick --keep-rules word,word-fp8 --out $OUT/launch_base >> $OUT/log.txt 2>&1
timeout 150 python3 scripts/bench_launch.py --quick --out $OUT/launch >> $OUT/log.txt 2>&1
rm -f $OUT/launch*/bench_launch.json
tail -n 3 $OUT/err.txt $OUT/log.txt
