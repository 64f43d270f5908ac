"""Round 29: where the public op's host time goes on the H100 host (B 1, 16K word stores, s 0.7): enqueue µs per
call of the op, of its two launches alone, of dense SDPA, and a cProfile of the op (shares only)."""
import cProfile, pstats, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
import torch
import torch.nn.functional as F
from mustafar.formats import CompressedStore
from mustafar.kernels import pack_into, sparse_decode_attention
from mustafar.kernels import decode, launch
from mustafar.pruning.keep import word_topk_mask

B, HQ, HKV, D, T = 1, 32, 8, 128, 16384
sts = []
for vd in ("native", "native"):
    st = CompressedStore(B, HKV, D, torch.float16, "cuda", 38, capacity=T, word_quota=True, value_dtype=vd)
    rows = torch.randn(B, HKV, T, D, device="cuda", dtype=torch.float16)
    pack_into(st, rows, word_topk_mask(rows.abs(), 38))
    sts.append(st)
q = torch.randn(B, HQ, D, device="cuda", dtype=torch.float16)
kw = torch.randn(B, HKV, 32, D, device="cuda", dtype=torch.float16); vw = kw.clone()
kd = torch.randn(B, HQ, T, D, device="cuda", dtype=torch.float16)
op = lambda: sparse_decode_attention(q, sts[0], sts[1], kw, vw, D**-0.5)
dense = lambda: F.scaled_dot_product_attention(q[:, :, None], kd, kd)


def host(fn, n=300, rep=7):
    for _ in range(20): fn()
    torch.cuda.synchronize(); out = []
    for _ in range(rep):
        t = time.perf_counter()
        for _ in range(n): fn()
        out.append((time.perf_counter() - t) / n * 1e6); torch.cuda.synchronize()
    return round(statistics.median(out), 1)


print("op host µs/call", host(op), "| dense sdpa", host(dense))
real = launch.CompiledLaunch.__call__
launch.CompiledLaunch.__call__ = lambda self, grid, args, stream, key=None: None
print("op with launches skipped (Python only)", host(op))
launch.CompiledLaunch.__call__ = real
cProfile.run("for _ in range(2000): op()", "/tmp/p")
pstats.Stats("/tmp/p").sort_stats("tottime").print_stats(14)
