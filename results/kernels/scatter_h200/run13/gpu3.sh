#!/bin/bash
# round 24, third call: Nsight Compute of the fp8 expanded formats and the fp16 word format at B 32 / 32K; the
# host-cost probe; the reworked 5:16 GPU test; bench_launch
export PYTHONPATH=$PWD
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for f in nm8ck nm16ck word; do
  timeout 150 $NCU --kernel-name regex:_sc_sparse --launch-skip 2 --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section SchedulerStats --section InstructionStats \
    --print-details all python3 results/kernels/scatter_h200/run13/ncu/ncu_r24.py $f > $OUT/ncu_$f.txt 2>&1
done
timeout 90 python3 results/kernels/scatter_h200/run13/host/host_probe.py > $OUT/host_probe.txt 2>&1
head -5 $OUT/host_probe.txt
timeout 120 python3 -m pytest -q -n 6 -p no:cacheprovider tests/kernels/test_gpu_scatter.py -k five_of_sixteen > $OUT/tests_nm16.txt 2>&1
tail -n 2 $OUT/tests_nm16.txt
grep -h -E "Duration|Memory Throughput|DRAM Throughput|Issued Warp|Eligible Warps|Shared" $OUT/ncu_*.txt | head -40
