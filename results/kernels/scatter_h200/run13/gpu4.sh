#!/bin/bash
# round 24, fourth call: the fragment swizzle (scatter_ptx.row_xor) -- GPU tests of the scatter decoder on the
# working tree, A/B against ade327a (build/base, git archive), then the kernel and end-to-end bench
export PYTHONPATH=$PWD
timeout 200 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_scatter.py > $OUT/tests_scatter.txt 2>&1
tail -n 2 $OUT/tests_scatter.txt
export AB_CASES=nm8skfp8:0.5,nm8sk:0.5
for tree in build/base .; do
  timeout 75 python3 results/kernels/scatter_h200/run6/ab/ab3.py $tree $([ $tree = . ] && echo swz || echo base) >> $OUT/ab.jsonl 2>>$OUT/ab_err.txt
done
timeout 75 python3 results/kernels/scatter_h200/run6/ab/ab3.py build/base base2 >> $OUT/ab.jsonl 2>>$OUT/ab_err.txt
cat $OUT/ab.jsonl; tail -n 5 $OUT/ab_err.txt
unset AB_CASES
timeout 150 python3 scripts/bench_kernels.py --out $OUT/k --default-only --skip-compress --batches 1,8,32 \
  --tokens 16384,32768 --sparsities 0.5 --keep-rules nm8ck-fp8-nm4v,nm8sk-fp8-nm4v,nm8ck-nm4v > $OUT/k.log 2>&1
grep -E "^\| nm8" $OUT/k/bench.md | cut -c1-200
timeout 110 python3 scripts/bench_decode.py --quick --formats dense-static,K0.5V0.5-nm8ck-fp8-nm4v-static --out $OUT/e > $OUT/e.log 2>&1
tail -n 8 $OUT/e.log
