#!/bin/bash
# round 34, third H100 call: Nsight Compute of main's scatter decoder (kernels as at 709f3d3) at B 8 / 16K,
# `word` fp8 s 0.7 (issue 16's case) and fp8 K 4:8c + V 2:4 s 0.5 beside it: where the L1 wavefronts and stalls go.
export PYTHONPATH=$PWD
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for case in "word-fp8 0.7" "nm8ck-fp8-nm4v 0.5"; do
  set -- $case
  timeout 200 $NCU --kernel-name regex:_sc_sparse --launch-skip 2 --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section SchedulerStats \
    --section InstructionStats --section SourceCounters --print-details all \
    python3 results/kernels/round34_h100/ncu_target.py $1 $2 > $OUT/ncu_$1.txt 2>&1
  grep -E "Duration|L1/TEX Cache Throughput|DRAM Throughput|Issued Warp Per|Eligible Warps|Stall Short|Stall Long|Stall MIO|Stall Barrier|Stall Wait" $OUT/ncu_$1.txt | head -12
done
