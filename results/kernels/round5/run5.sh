nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONUNBUFFERED=1 timeout 570 python3 scripts/bench_decode.py --model llama3_8b --context 16384 --batches 1,8,16 --max-batch --out $OUT 2>&1 | tail -40
