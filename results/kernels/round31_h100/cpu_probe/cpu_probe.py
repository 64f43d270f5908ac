"""Round 31: the project machine's (CPU, no GPU) Python per call, every launch a no-op (round 30's mocked kernels,
``round30_h100/cpu_probe/cpu_probe.py``): the public decode op on dynamic stores at one length (B 1, 32 query / 8
KV heads, D 128, 2,048 word tokens), one eager top-k pack of one token into a dynamic and a static word store, and
a miss of the split plan's wave model at 16K tokens (512 tiles of 32, 8 rows, 132 SMs x 8 slots; ms, median of
7).

Usage (repository root): python results/kernels/round31_h100/cpu_probe/cpu_probe.py TREE
TREE: a tree holding mustafar/ (``.``, or a ``git archive REV mustafar`` copy)."""
import sys, time
sys.argv = [sys.argv[0], sys.argv[1]]
src = open("results/kernels/round30_h100/cpu_probe/cpu_probe.py").read().split("q = torch.randn(B, HQ, D")[0]
g = {"__name__": "probe"}
exec(compile(src, "round30_cpu_probe", "exec"), g)  # its mocks, stores() and host() on sys.argv[1]'s tree
torch, host, decode = g["torch"], g["host"], g["decode"]
B, HQ, HKV, D = g["B"], g["HQ"], g["HKV"], g["D"]
from mustafar.kernels import topk_pack_into

q = torch.randn(B, HQ, D, dtype=torch.float16)
kw = torch.randn(B, HKV, 32, D, dtype=torch.float16); vw = kw.clone()
k, v = g["stores"](False)
print("dynamic stores: op Python µs/call", host(lambda: g["sparse_decode_attention"](q, k, v, kw, vw, D**-0.5)))
one = torch.randn(1, HKV, 1, D, dtype=torch.float16)
for static in (False, True):
    st = g["CompressedStore"](1, HKV, D, torch.float16, "cpu", 38, capacity=1 << 16, static=static, word_quota=True)
    print(f"{'static' if static else 'dynamic'} word store: pack Python µs/call",
          host(lambda: topk_pack_into(st, one, 38), n=2000, rep=5))
misses = []
for _ in range(7):
    decode._wave_model_splits.cache_clear()
    t = time.perf_counter(); decode._wave_model_splits(8, 512, 132 * 8); misses.append(time.perf_counter() - t)
print("wave model miss at 512 tiles, ms (median of 7)", round(sorted(misses)[3] * 1e3, 3))
