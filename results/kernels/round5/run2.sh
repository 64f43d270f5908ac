nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
python3 -m pytest -q tests/test_gpu.py 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
PYTHONUNBUFFERED=1 python3 scripts/bench_kernels.py --out $OUT 2>&1 | tee $OUT/bench_log.txt | tail -80
