"""Round 31, second call: the eager op's host time (B 1 / 16K word stores, s 0.7), µs per call, for static stores
(a replayed plan through the one-call launch sequence where the tree has it), dynamic stores at a fixed length, and
dynamic stores whose length moves by one token every call as in decoding (``op_dynamic_growing``: lengths
15,360..16,383 in turn, the cost of setting the two lengths, ``length_setters``, subtracted), next to dense SDPA.
``op_dynamic_new_lengths_once``: one pass over lengths 8,192..15,359 that no call has seen, wall µs per call with the
setters (the split plan's caches miss every 32 tokens there, as in a decode loop). Both trees: the base (e39d8dd:
dynamic stores take the full path) and this one (they replay a plan too).

Usage (repository root): python results/kernels/round31_h100/host/breakdown2.py TREE  (TREE: . or a git-archive copy)"""
import itertools, json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import torch.nn.functional as F
from mustafar.formats import CompressedStore
from mustafar.kernels import decode, pack_into, sparse_decode_attention
from mustafar.pruning.keep import word_topk_mask

assert decode.__file__.startswith(str(__import__("pathlib").Path(sys.argv[1]).resolve())), decode.__file__
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
dyn = []
for st in sts:
    d = CompressedStore(B, HKV, D, torch.float16, "cuda", 38, capacity=T, word_quota=True)
    d.bits.copy_(st.bits); d.vals.copy_(st.vals); d.length = T; dyn.append(d)
q = torch.randn(B, HQ, D, device="cuda", dtype=torch.float16)
kw = torch.randn(B, HKV, 32, D, device="cuda", dtype=torch.float16); vw = kw.clone()
kd = torch.randn(B, HKV, T, D, device="cuda", dtype=torch.float16)
op = lambda a, b: sparse_decode_attention(q, a, b, kw, vw, D**-0.5)
lengths = itertools.cycle(range(T - 1024, T))


def set_lengths():
    n = next(lengths); dyn[0].length = n; dyn[1].length = n


def growing():
    set_lengths(); op(*dyn)


for _ in range(3): op(*sts); growing()
torch.cuda.synchronize()
res = {"tree": sys.argv[1]}
# one pass over lengths no call has seen (8,192..15,359; the split plan's caches miss every 32 tokens), as a decode
# loop meets them: µs per call with the setters, once
t = time.perf_counter()
for n in range(8192, T - 1024):
    dyn[0].length = n; dyn[1].length = n; op(*dyn)
torch.cuda.synchronize()
res["op_dynamic_new_lengths_once"] = round((time.perf_counter() - t) / (T - 1024 - 8192) * 1e6, 2)
for r in range(2):
    res.setdefault("op_static", []).append(host(lambda: op(*sts)))
    dyn[0].length = dyn[1].length = T
    res.setdefault("op_dynamic_fixed", []).append(host(lambda: op(*dyn)))
    setters = host(set_lengths, n=1024)
    res.setdefault("length_setters", []).append(setters)
    res.setdefault("op_dynamic_growing", []).append(round(host(growing, n=1024, rep=5) - setters, 2))
    res.setdefault("dense_sdpa", []).append(host(lambda: F.scaled_dot_product_attention(q[:, :, None], kd, kd, enable_gqa=True)))
res["dynamic_plan_kept"] = getattr(dyn[0], "launch_plan", None) is not None
print(json.dumps(res))
