nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q -x tests/test_gpu.py -k "v6 or default" 2>&1 | tail -15 | tee $OUT/gpu_tests_v6.txt
CFG='{"v5 n32 w1": {"version": 5, "block_n": 32, "num_warps": 1},
"v6 n32": {"version": 6, "block_n": 32},
"v6 n16": {"version": 6, "block_n": 16},
"v6 n64": {"version": 6, "block_n": 64}}'
PYTHONUNBUFFERED=1 python3 scripts/sweep_decode.py --sizes 8x16384,32x16384,8x32768,32x32768 --out $OUT --configs "$CFG" 2>&1 | tee $OUT/sweep_log.txt
PYTHONUNBUFFERED=1 python3 scripts/sweep_decode.py --sparsity 0.5 --sizes 8x16384,32x16384 --configs "$CFG" 2>&1 | tee $OUT/sweep_log_s05.txt
