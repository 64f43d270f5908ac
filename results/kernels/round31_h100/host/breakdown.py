"""Round 31: the eager op's host time on the GPU host (B 1 / 16K static word stores, s 0.7), µs per call: the op
replaying its plan through the one-call launch sequence (``op``) and through Triton's two C launches
(``op_two_launches``, decode.LAUNCH_SEQUENCES off), alternating three times in one process; the op on dynamic stores
(the full path), dense SDPA, the output allocation alone, one eager prune+pack of one token into a static word store
(``pack_word``, the plain-Triton kernel) and into a static exact store (``pack_exact``, the PTX kernel), and a fixed
piece of pure Python (the host's speed). Trees without the sequence (the base) report ``op`` only.

Usage (repository root): python results/kernels/round31_h100/host/breakdown.py TREE  (TREE: . or a git-archive copy)"""
import json, statistics, sys, time, timeit
sys.path.insert(0, sys.argv[1])
import torch
import torch.nn.functional as F
from mustafar.formats import CompressedStore
from mustafar.kernels import decode, pack_into, sparse_decode_attention, topk_pack_into
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
q = torch.randn(B, HQ, D, device="cuda", dtype=torch.float16)
kw = torch.randn(B, HKV, 32, D, device="cuda", dtype=torch.float16); vw = kw.clone()
kd = torch.randn(B, HKV, T, D, device="cuda", dtype=torch.float16)
op = lambda: sparse_decode_attention(q, sts[0], sts[1], kw, vw, D**-0.5)
op(); op(); op(); torch.cuda.synchronize()  # compiles, measures the occupancy (another split plan), keeps a plan
res = {"tree": sys.argv[1]}
has_seq = hasattr(decode, "LAUNCH_SEQUENCES")
ref = op().clone()
for r in range(3 if has_seq else 1):
    for on in ((True, False) if has_seq else (None,)):
        if has_seq:
            decode.LAUNCH_SEQUENCES = on
            sts[0].launch_plan = None
            op(); op()
            assert (sts[0].launch_plan.seq is not None) == on
            assert torch.equal(op(), ref)
        res.setdefault("op" if on in (True, None) else "op_two_launches", []).append(host(op))
dyn = []
for st in sts:  # the same tokens in dynamic stores: the full path every call (no plan)
    d = CompressedStore(B, HKV, D, torch.float16, "cuda", 38, capacity=T, word_quota=True)
    d.bits.copy_(st.bits); d.vals.copy_(st.vals); d.length = T; dyn.append(d)
res["op_dynamic_full_path"] = host(lambda: sparse_decode_attention(q, dyn[0], dyn[1], kw, vw, D**-0.5))
res["dense_sdpa"] = host(lambda: F.scaled_dot_product_attention(q[:, :, None], kd, kd, enable_gqa=True))
res["empty_like"] = host(lambda: torch.empty_like(q))
one = torch.randn(B, HKV, 1, D, device="cuda", dtype=torch.float16)
for name, word in (("pack_word", True), ("pack_exact", False)):
    st = CompressedStore(B, HKV, D, torch.float16, "cuda", 38, capacity=4096, static=True, word_quota=word)
    res[name] = host(lambda: topk_pack_into(st, one, 38), n=100, rep=9)  # 2,000 tokens of 4,096
g = {"x": q}
res["python_calibration"] = round(timeit.timeit("for _ in range(100): x.shape; x.dtype; x.data_ptr()", globals=g, number=2000) / 2000 * 1e6, 2)
print(json.dumps(res))
