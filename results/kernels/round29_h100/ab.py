"""A/B driver (round 25, reused in round 29): python3 ab.py ROOT TAG [CAP SIDES] -- graph-replayed times of the scatter decoder of the
tree at ROOT for the keep rules of scripts/bench_kernels.py (AB_RULES, comma-separated; default the three fp8
formats whose values go into the P·V operand) at AB_SIZES (B:T pairs), one JSON line per case. CAP / SIDES
override the register cap and ring depth (decode._scatter_plan). The dense SDPA time is measured once per size."""
import json, math, os, sys
from pathlib import Path

root = Path(sys.argv[1]).resolve(); tag = sys.argv[2]
cap = int(sys.argv[3]) if len(sys.argv) > 3 else None
sides = int(sys.argv[4]) if len(sys.argv) > 4 else None
sys.path.insert(0, str(root)); sys.path.insert(0, str(root / "scripts"))
import torch
from mustafar.bench.inputs import WINDOW, decode_call, dense_decode_call, rel_err
from mustafar.bench.shapes import attention_shape
from mustafar.kernels import decode, sparse_decode_attention
from bench_kernels import _rule_sparsity, graph_time, rule_inputs

assert decode.__file__.startswith(str(root)), decode.__file__
if cap is not None:
    orig = decode._scatter_plan
    decode._scatter_plan = lambda k, v, side, n: (cap, sides or orig(k, v, side, n)[1])
rules = os.environ.get("AB_RULES", "nm8ck-fp8-nm4v,nm16ck-fp8-nm16v,word-fp8-nm4v").split(",")
sizes = [tuple(map(int, x.split(":"))) for x in os.environ.get("AB_SIZES", "8:16384,8:32768,32:16384,32:32768").split(",")]
shape = attention_shape("llama3_8b")


def inputs(rule, b, t):
    return rule_inputs(rule, _rule_sparsity(rule), b, t, shape, **({"window": 17} if b == 2 else {}))


dense = {(b, t): graph_time(dense_decode_call(shape, b, t + WINDOW)) for b, t in sizes}
for rule in rules:
    small = inputs(rule, 2, 1000)
    ref = sparse_decode_attention(small.q, small.k_store, small.v_store, small.k_window, small.v_window, small.scale,
                                  backend="torch")
    o = decode_call(small, {}, out=torch.full_like(small.q, math.nan))()
    err = math.inf if o.isnan().any() else rel_err(o, ref)
    for b, t in sizes:
        inp = inputs(rule, b, t)
        call = decode_call(inp, {}); call(); torch.cuda.synchronize()
        us = graph_time(call)
        print(json.dumps(dict(tag=tag, rule=rule, b=b, t=t, dense=round(dense[b, t], 1), us=round(us, 1),
                              x=round(dense[b, t] / us, 3), err=float(f"{err:.2e}"),
                              occ=sorted(set(decode._OCCUPANCY.values())))), flush=True)
        del inp; torch.cuda.empty_cache()
