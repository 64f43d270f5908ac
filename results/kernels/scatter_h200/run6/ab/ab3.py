"""Round-12 A/B driver: python3 ab3.py ROOT TAG [CAP SIDES] -- times the scatter decoder of the tree at ROOT.
AB_CASES=native:0.5,fp8:0.5 (values:sparsity) narrows the cases (default: fp16 and fp8 values at 0.5 and 0.7);
values nm4v / fp8nm4v: fp16 / fp8 values, V kept two of every four channels (round 15); nm8sk / nm8skfp8: K kept
four of every eight strided channels too (round 18's register-cap A/B, results/kernels/scatter_h200/run9/ab/)."""
import json, math, os, sys
from pathlib import Path
root = Path(sys.argv[1]).resolve(); tag = sys.argv[2]
cap = int(sys.argv[3]) if len(sys.argv) > 3 else None
sides = int(sys.argv[4]) if len(sys.argv) > 4 else None
sys.path.insert(0, str(root)); sys.path.insert(0, str(root / "scripts"))
import torch
from mustafar.bench.inputs import WINDOW, decode_call, dense_decode_call, decode_inputs, rel_err
from mustafar.bench.shapes import attention_shape
from mustafar.kernels import sparse_decode_attention, decode
from mustafar.pruning.keep import exact_keep
from bench_kernels import graph_time
assert decode.__file__.startswith(str(root)), decode.__file__
cases = [(vd, s) for vd in ("native", "fp8") for s in (0.5, 0.7)]
if os.environ.get("AB_CASES"):
    cases = [(vd, float(s)) for vd, s in (c.split(":") for c in os.environ["AB_CASES"].split(","))]
if cap is not None:
    orig = decode._scatter_plan
    decode._scatter_plan = lambda k, v, side, n: (cap, sides or orig(k, v, side, n)[1])
    cases = cases if os.environ.get("AB_CASES") else [("native", 0.5)]
shape = attention_shape("llama3_8b")
sizes = [(8, 32768), (32, 16384), (32, 32768)]
for vd, s in cases:
    keep = exact_keep(shape.head_dim, s)
    extra = {"v_nm_group": 4} if vd.endswith("nm4v") else {}
    if vd.startswith("nm8sk"):  # K four of every eight strided channels, V two of every four (rounds 16-17)
        extra = {"v_nm_group": 4, "k_nm_group": 8, "k_strided": True}
    values = vd.removesuffix("nm4v").removeprefix("nm8sk") or "native"
    small = decode_inputs(shape, 2, 1000, keep, word_quota=True, value_dtype=values, window=17, **extra)
    ref = sparse_decode_attention(small.q, small.k_store, small.v_store, small.k_window, small.v_window, small.scale, backend="torch")
    o = decode_call(small, {}, out=torch.full_like(small.q, math.nan))()
    err = math.inf if o.isnan().any() else rel_err(o, ref)
    for b, t in sizes:
        dense = graph_time(dense_decode_call(shape, b, t + WINDOW))
        inp = decode_inputs(shape, b, t, keep, word_quota=True, value_dtype=values, **extra)
        call = decode_call(inp, {}); call(); torch.cuda.synchronize()
        us = graph_time(call)
        row = dict(tag=tag, vd=vd, s=s, b=b, t=t, dense=round(dense, 1), us=round(us, 1), err=float(f"{err:.2e}"),
                   occ=list(decode._OCCUPANCY.values()))
        print(json.dumps(row), flush=True)
        del inp; torch.cuda.empty_cache()
