"""Round-10 A/B: shared allocation rounding (occupancy) and ring depth. A record of the run (README: it ran with two temporary switches since removed)."""
import json, math, sys, time
from pathlib import Path
import torch, triton
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mustafar.bench.inputs import WINDOW, decode_call, decode_inputs, dense_decode_call, rel_err
from mustafar.bench.shapes import attention_shape
from mustafar.kernels import sparse_decode_attention, decode
from mustafar.pruning.keep import exact_keep
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_kernels import graph_time

ORIG_RING = decode._scatter_ring
def pow2_ring(tile, side):
    sides, words = ORIG_RING(tile, side)
    return sides, triton.next_power_of_2(words)

VARIANTS = {
    "pow2 (old)": dict(ring=pow2_ring, sides=None),
    "exact s3": dict(ring=ORIG_RING, sides=None),
    "exact s4": dict(ring=ORIG_RING, sides=4),
    "exact s2": dict(ring=ORIG_RING, sides=2),
}

def use(v):
    decode._scatter_ring = v["ring"]
    decode.SCATTER_SIDES = v["sides"]
    decode._CONFIGS.clear(); decode._OCCUPANCY.clear()

shape = attention_shape("llama3_8b")
out = []
sizes = [(1, 32768), (8, 16384), (8, 32768), (32, 16384), (32, 32768)]
for vd in ("native", "fp8"):
    for s in (0.7, 0.5):
        keep = exact_keep(shape.head_dim, s)
        small = decode_inputs(shape, 2, 1000, keep, word_quota=True, value_dtype=vd, window=17)
        ref = sparse_decode_attention(small.q, small.k_store, small.v_store, small.k_window, small.v_window, small.scale, backend="torch")
        for name, v in VARIANTS.items():
            use(v)
            o = decode_call(small, {}, out=torch.full_like(small.q, math.nan))()
            err = math.inf if o.isnan().any() else rel_err(o, ref)
            print(f"check {vd} s{s} {name}: {err:.2e}", flush=True)
        for b, t in sizes:
            if vd == "fp8" and b == 1: continue
            dense = graph_time(dense_decode_call(shape, b, t + WINDOW))
            inp = decode_inputs(shape, b, t, keep, word_quota=True, value_dtype=vd)
            row = dict(vd=vd, s=s, b=b, t=t, dense=dense)
            for name, v in VARIANTS.items():
                use(v)
                call = decode_call(inp, {})
                call()
                torch.cuda.synchronize()
                occ = list(decode._OCCUPANCY.values())
                row[name] = (graph_time(call), occ)
            print(json.dumps(row), flush=True)
            out.append(row)
            del inp; torch.cuda.empty_cache()
import os
Path(os.environ.get("OUT", "/tmp")).joinpath("ab.json").write_text(json.dumps(out, indent=1))
