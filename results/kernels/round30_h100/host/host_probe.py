"""Round 30: the public op's host time per eager call on the GPU host, for the tree given (``.`` or a carried base
tree), B 1 / 16K, static word stores (fp16 and fp8 values), s 0.7: the whole call, the call with both launches
skipped (its Python), and dense SDPA (enable_gqa) beside it. One JSON line per case.

Usage: python3 host_probe.py TREE TAG"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import torch.nn.functional as F
from mustafar.formats import CompressedStore
from mustafar.kernels import launch, pack_into, sparse_decode_attention
from mustafar.pruning.keep import word_topk_mask

B, HQ, HKV, D, T = 1, 32, 8, 128, 16384


def host(fn, n=200, rep=9):
    """µs per call to enqueue ``n`` back-to-back calls (median of ``rep``), the GPU drained before each window."""
    for _ in range(20): fn()
    torch.cuda.synchronize(); out = []
    for _ in range(rep):
        t = time.perf_counter()
        for _ in range(n): fn()
        out.append((time.perf_counter() - t) / n * 1e6); torch.cuda.synchronize()
    return round(statistics.median(out), 1)


def stores(vd):
    sts = []
    for _ in range(2):
        st = CompressedStore(B, HKV, D, torch.float16, "cuda", 38, capacity=T, static=True, word_quota=True, value_dtype=vd)
        rows = torch.randn(B, HKV, T, D, device="cuda", dtype=torch.float16)
        pack_into(st, rows, word_topk_mask(rows.abs(), 38))
        sts.append(st)
    return sts


q = torch.randn(B, HQ, D, device="cuda", dtype=torch.float16)
kw = torch.randn(B, HKV, 32, D, device="cuda", dtype=torch.float16); vw = kw.clone()
kd = torch.randn(B, HKV, T, D, device="cuda", dtype=torch.float16)
dense = lambda: F.scaled_dot_product_attention(q[:, :, None], kd, kd, enable_gqa=True)
tag = sys.argv[2]
print(json.dumps(dict(tag=tag, case="dense sdpa", host_us=host(dense))))
for vd in ("native", "fp8"):
    k, v = stores(vd)
    op = lambda: sparse_decode_attention(q, k, v, kw, vw, D**-0.5)
    whole = host(op)
    real_call, real_launch = launch.CompiledLaunch.__call__, getattr(launch.CompiledLaunch, "launch", None)
    launch.CompiledLaunch.__call__ = lambda self, grid, args, stream, key=None: None
    if real_launch is not None:
        launch.CompiledLaunch.launch = lambda self, grid, args, stream, key: True
    python = host(op)
    launch.CompiledLaunch.__call__ = real_call
    if real_launch is not None:
        launch.CompiledLaunch.launch = real_launch
    print(json.dumps(dict(tag=tag, case=f"word {vd} s0.7", host_us=whole, python_us=python, launches_us=round(whole - python, 1))))
