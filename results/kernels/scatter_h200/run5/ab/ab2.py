"""Round-10 A/B 2: register cap / P·V halves / lazy value loads / exact ring. A record of the run (README: it ran with two temporary switches since removed)."""
import json, math, os, sys
from pathlib import Path
import torch, triton
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from mustafar.bench.inputs import WINDOW, decode_call, decode_inputs, dense_decode_call, rel_err
from mustafar.bench.shapes import attention_shape
from mustafar.kernels import sparse_decode_attention, decode, scatter_ptx
from mustafar.pruning.keep import exact_keep
from bench_kernels import graph_time

ORIG = decode._scatter_ring
def pow2(tile, side):
    sides, w = ORIG(tile, side); return sides, triton.next_power_of_2(w) + (triton.next_power_of_2(w) == tile // 4)
VARIANTS = {
 "A(head)": dict(ring=pow2, cap=None, lazy=False, halves=False, sides=None),
 "B": dict(ring=pow2, cap=None, lazy=True, halves=True, sides=None),
 "Bx": dict(ring=ORIG, cap=None, lazy=True, halves=True, sides=None),
 "C168": dict(ring=ORIG, cap=168, lazy=True, halves=True, sides=None),
 "C168s2": dict(ring=ORIG, cap=168, lazy=True, halves=True, sides=2),
}
ORIGCAP = decode._scatter_maxnreg
def use(v):
    decode._scatter_ring = v["ring"]; decode.SCATTER_SIDES = v["sides"]
    decode._scatter_maxnreg = ORIGCAP if v["cap"] is None else (lambda a, b, c=v["cap"]: c)
    scatter_ptx.LAZY = v["lazy"]; decode.PV_HALVES = v["halves"]
    scatter_ptx.scatter_asm.cache_clear(); scatter_ptx.score_asm.cache_clear()
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
            row = dict(vd=vd, s=s, b=b, t=t, dense=round(dense, 1))
            for name, v in VARIANTS.items():
                use(v)
                call = decode_call(inp, {})
                call(); torch.cuda.synchronize()
                row[name] = (round(graph_time(call), 1), list(decode._OCCUPANCY.values()))
            print(json.dumps(row), flush=True)
            out.append(row)
            del inp; torch.cuda.empty_cache()
Path(os.environ.get("OUT", "/tmp")).joinpath("ab2.json").write_text(json.dumps(out, indent=1))
