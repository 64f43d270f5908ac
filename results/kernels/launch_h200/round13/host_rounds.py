"""Host time per eager call of the public op at B 1 / 16K, each keep rule and sparsity, interleaved in rounds
(median/min/max µs of five 200-call windows); then a cProfile of the slowest. python3 host_rounds.py from the
repository root (results/kernels/launch_h200/round13/README.md)."""
import cProfile, pstats, sys, time, io, statistics, gc
import torch
sys.path.insert(0, "scripts")
from bench_launch import _stores, _graph, HQ, HKV, D, WINDOW
from mustafar.kernels import sparse_decode_attention
q = torch.randn(1, HQ, D, device="cuda", dtype=torch.float16)
kw, vw = (torch.randn(1, HKV, WINDOW, D, device="cuda", dtype=torch.float16) for _ in "kv")
cfgs = {}
for rule in ("exact", "word", "word-fp8"):
    for keep in (64, 38):
        ks, vs = _stores(1, keep, 16384, False, 1, rule=rule)
        out = torch.empty_like(q)
        f = (lambda ks=ks, vs=vs, out=out: sparse_decode_attention(q, ks, vs, kw, vw, D**-0.5, out=out))
        for _ in range(20): f()
        cfgs[(rule, keep)] = f
torch.cuda.synchronize()
def host(f, calls=200, rep=5):
    hs = []
    for _ in range(rep):
        t = time.perf_counter()
        for _ in range(calls): f()
        hs.append((time.perf_counter() - t) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(hs), min(hs), max(hs)
for rnd in range(4):
    if rnd == 2:
        for f in cfgs.values(): _graph(f, 50, 10)
        print("-- graphs captured")
    if rnd == 3:
        gc.disable(); print("-- gc off")
    print(f"round {rnd}: " + "  ".join(f"{k[0]}/{k[1]} {'/'.join(f'{x:.0f}' for x in host(f))}" for k, f in cfgs.items()), flush=True)
gc.enable()
worst = max(cfgs, key=lambda k: host(cfgs[k])[0])
pr = cProfile.Profile(); pr.enable()
for _ in range(2000): cfgs[worst]()
pr.disable(); torch.cuda.synchronize()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14)
print("worst", worst); print(s.getvalue()[:4000])
