"""Round 34 A/B: graph-replayed times (L2 flushed) of the decoder of the tree at ROOT, one process per tree, the
trees alternating (gpu1.sh); dense SDPA measured in each process beside it. Llama-3-8B shapes; one JSON line per
case, with the tree's error against the plain-PyTorch decode on a small case (B 2, 1000 tokens, window 17).
Usage: python3 results/kernels/round34_h100/ab.py ROOT TAG (from the repository root)."""
import json, math, sys
from pathlib import Path

root = Path(sys.argv[1]).resolve(); tag = sys.argv[2]
sys.path.insert(0, str(root)); sys.path.insert(0, str(root / "scripts"))
import torch
from mustafar.bench.inputs import WINDOW, decode_call, dense_decode_call, rel_err
from mustafar.bench.shapes import attention_shape
from mustafar.kernels import decode, sparse_decode_attention
from bench_kernels import graph_time, rule_inputs

assert decode.__file__.startswith(str(root)), decode.__file__
RULES = (("word-fp8", 0.7), ("word", 0.7), ("nm8ck-fp8-nm4v", 0.5))
SIZES = ((8, 16384), (8, 32768), (16, 16384), (32, 16384), (1, 32768))
shape = attention_shape("llama3_8b")
dense = {(b, t): graph_time(dense_decode_call(shape, b, t + WINDOW)) for b, t in SIZES}
for rule, s in RULES:
    small = rule_inputs(rule, s, 2, 1000, shape, window=17)
    ref = sparse_decode_attention(small.q, small.k_store, small.v_store, small.k_window, small.v_window, small.scale,
                                  backend="torch")
    o = decode_call(small, {}, out=torch.full_like(small.q, math.nan))()
    err = math.inf if o.isnan().any() else rel_err(o, ref)
    for b, t in SIZES:
        inp = rule_inputs(rule, s, b, t, shape)
        call = decode_call(inp, {}); call(); torch.cuda.synchronize()
        us = graph_time(call)
        print(json.dumps(dict(tag=tag, rule=rule, s=s, b=b, t=t, dense=round(dense[b, t], 1), us=round(us, 2),
                              x=round(dense[b, t] / us, 3), err=float(f"{err:.2e}"))), flush=True)
        del inp; torch.cuda.empty_cache()
