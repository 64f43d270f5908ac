nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q tests/test_gpu.py 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
python3 -c "
import torch, sys; sys.path.insert(0, '.'); sys.path.insert(0, 'scripts')
from bench_kernels import build_stores, HQ, HKV, D, WINDOW
from mustafar.kernels import sparse_decode_attention
from mustafar.kernels.decode import planned_splits, _OCCUPANCY
q = torch.randn(8, HQ, D, device='cuda', dtype=torch.float16); ks, vs = build_stores(8, 1024, 38)
kw = torch.randn(8, HKV, WINDOW, D, device='cuda', dtype=torch.float16)
for cfg in (dict(), dict(version=6, block_n=32), dict(version=5, block_n=32, num_warps=1)):
    sparse_decode_attention(q, ks, vs, kw, kw, 0.1, **cfg)
print('occupancy (driver):', _OCCUPANCY)
" 2>&1 | tee $OUT/occupancy.txt
PYTHONUNBUFFERED=1 python3 scripts/bench_kernels.py --out $OUT 2>&1 | tee $OUT/bench_log.txt | tail -40
