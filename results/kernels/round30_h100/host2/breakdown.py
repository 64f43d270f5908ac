"""Round 30: where the eager op's host time goes on the GPU host (B 1 / 16K static word stores, s 0.7): µs per call
of the whole op (replaying its plan), the same op on dynamic stores (the full path), the op with both launches skipped, the output allocation alone, one direct merge launch alone,
dense SDPA, and a fixed piece of pure Python (the host's speed against the project machine's)."""
import json, statistics, sys, time, timeit
from pathlib import Path
sys.path.insert(0, str(Path.cwd()))
import torch
import torch.nn.functional as F
from mustafar.formats import CompressedStore
from mustafar.kernels import decode, launch, pack_into, sparse_decode_attention
from mustafar.pruning.keep import word_topk_mask

B, HQ, HKV, D, T = 1, 32, 8, 128, 16384


def host(fn, n=200, rep=9):
    for _ in range(20): fn()
    torch.cuda.synchronize(); out = []
    for _ in range(rep):
        t = time.perf_counter()
        for _ in range(n): fn()
        out.append((time.perf_counter() - t) / n * 1e6); torch.cuda.synchronize()
    return round(statistics.median(out), 2)


sts = []
for _ in range(2):
    st = CompressedStore(B, HKV, D, torch.float16, "cuda", 38, capacity=T, static=True, word_quota=True)
    rows = torch.randn(B, HKV, T, D, device="cuda", dtype=torch.float16)
    pack_into(st, rows, word_topk_mask(rows.abs(), 38)); sts.append(st)
q = torch.randn(B, HQ, D, device="cuda", dtype=torch.float16)
kw = torch.randn(B, HKV, 32, D, device="cuda", dtype=torch.float16); vw = kw.clone()
kd = torch.randn(B, HKV, T, D, device="cuda", dtype=torch.float16)
op = lambda: sparse_decode_attention(q, sts[0], sts[1], kw, vw, D**-0.5)
op(); op(); op(); torch.cuda.synchronize()  # compiles, measures the occupancy (another split plan), keeps a plan
plan = sts[0].launch_plan
dyn = []
for st in sts:  # the same tokens in dynamic stores: the full path every call (no plan)
    d = CompressedStore(B, HKV, D, torch.float16, "cuda", 38, capacity=T, word_quota=True)
    d.bits.copy_(st.bits); d.vals.copy_(st.vals); d.length = T; dyn.append(d)
op_dyn = lambda: sparse_decode_attention(q, dyn[0], dyn[1], kw, vw, D**-0.5)
res = dict(op=host(op), op_dynamic_full_path=host(op_dyn), dense_sdpa=host(lambda: F.scaled_dot_product_attention(q[:, :, None], kd, kd, enable_gqa=True)),
           empty_like=host(lambda: torch.empty_like(q)))
o_ptr, lse_ptr, splits = plan.merge_args
out = torch.empty_like(q); stream = torch.cuda.current_stream().cuda_stream
res["merge_launch"] = host(lambda: plan.merge.launch(plan.merge_grid, (o_ptr, lse_ptr, out.data_ptr(), splits), stream, plan.merge_key))
real = launch.CompiledLaunch.launch
launch.CompiledLaunch.launch = lambda self, grid, args, stream, key: True
res["op_launches_skipped"] = host(op)
launch.CompiledLaunch.launch = real
g = {"x": q}
res["python_calibration"] = round(timeit.timeit("for _ in range(100): x.shape; x.dtype; x.data_ptr()", globals=g, number=2000) / 2000 * 1e6, 2)
print(json.dumps(res))
