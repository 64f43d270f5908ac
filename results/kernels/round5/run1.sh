set -x
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
CFG='{"v3 n64 w4 p2": {"block_n": 64, "num_warps": 4, "prefetch": 2},
"v3 n32 w1 p2": {"block_n": 32, "num_warps": 1, "prefetch": 2},
"v3 n64 w1 p2": {"block_n": 64, "num_warps": 1, "prefetch": 2},
"v3 n32 w2 p2": {"block_n": 32, "num_warps": 2, "prefetch": 2},
"v3 n64 w2 p2": {"block_n": 64, "num_warps": 2, "prefetch": 2},
"v3 n16 w1 p4": {"block_n": 16, "num_warps": 1, "prefetch": 4},
"v5 n64 w4": {"version": 5, "block_n": 64, "num_warps": 4},
"v5 n32 w1": {"version": 5, "block_n": 32, "num_warps": 1},
"v5 n64 w1": {"version": 5, "block_n": 64, "num_warps": 1},
"v5 n32 w2": {"version": 5, "block_n": 32, "num_warps": 2},
"v5 n16 w1": {"version": 5, "block_n": 16, "num_warps": 1}}'
PYTHONUNBUFFERED=1 python3 scripts/sweep_decode.py --sizes 8x16384,32x16384,8x32768 --out $OUT --configs "$CFG" 2>&1 | tee $OUT/sweep_log.txt
M="regex:smsp__average_warps_issue_stalled_.*_per_issue_active"
S="--section SpeedOfLight --section MemoryWorkloadAnalysis_Tables --section SchedulerStats --section Occupancy --section InstructionStats --section WarpStateStats"
timeout 150 ncu --kernel-name regex:_gl_sparse_decode_kernel --launch-skip 2 --launch-count 1 $S --metrics "$M" python3 scripts/profile_decode.py --batch 32 --tokens 16384 --sparsity 0.7 --options '{"version": 5}' > $OUT/ncu_v5_w4.txt 2>&1
timeout 100 ncu --kernel-name regex:_gl_sparse_decode_kernel --launch-skip 2 --launch-count 1 --metrics "breakdown:l1tex__throughput.avg.pct_of_peak_sustained_elapsed" python3 scripts/profile_decode.py --batch 32 --tokens 16384 --sparsity 0.7 --options '{"version": 5}' > $OUT/ncu_v5_l1.txt 2>&1
timeout 150 ncu --kernel-name regex:_sparse_decode_kernel --launch-skip 2 --launch-count 1 $S --metrics "$M" python3 scripts/profile_decode.py --batch 32 --tokens 16384 --sparsity 0.7 > $OUT/ncu_v3_w4.txt 2>&1
