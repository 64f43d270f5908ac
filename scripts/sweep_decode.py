"""Sweep sparse decode launches against dense SDPA at a few sizes (an exploration tool for the GPU).

Every launch is first checked against the PyTorch reference on a small case (a failing one is reported and
skipped), then timed (do_bench median, L2 flushed) at each size; prints a table and writes JSON. A launch is ``{}``
(the public op's default) or options of the private launch: decoder ("staged" / "portable"), block_n, num_warps,
num_splits.

  python3 scripts/sweep_decode.py --sizes 8x16384,32x16384 --sparsity 0.7 --out $OUT \
      --configs '{"default": {}, "portable w1": {"decoder": "portable", "block_n": 32, "num_warps": 1}}'

Imports only torch/triton and mustafar library modules (the device image has no sweep stack).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mustafar.bench.inputs import (  # noqa: E402
    WINDOW,
    decode_call,
    decode_inputs,
    dense_decode_call,
    rel_err,
    time_us,
)
from mustafar.bench.shapes import attention_shape  # noqa: E402
from mustafar.kernels import sparse_decode_attention  # noqa: E402
from mustafar.pruning.keep import exact_keep  # noqa: E402


def check(shape, options: dict, keep: int) -> float:
    """Relative error against the PyTorch reference on a small GQA case with a ragged last tile."""
    inp = decode_inputs(shape, 2, 1000, keep, window=17)
    ref = sparse_decode_attention(
        inp.q, inp.k_store, inp.v_store, inp.k_window, inp.v_window, inp.scale, backend="torch"
    )
    out = decode_call(inp, options, out=torch.full_like(inp.q, math.nan))()
    return math.inf if out.isnan().any() else rel_err(out, ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", required=True, help="JSON: name -> launch options ({} = the default launch)")
    ap.add_argument("--sizes", default="8x16384,32x16384", help="comma-separated BATCHxTOKENS")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--model", default="llama3_8b", help="attention shape (mustafar.bench.shapes.ARCHS)")
    ap.add_argument("--rep", type=int, default=60)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.exit(2, "sweep_decode.py needs a CUDA GPU: it times the decode kernels there.\n")
    configs = json.loads(args.configs)
    shape = attention_shape(args.model)
    keep = exact_keep(shape.head_dim, args.sparsity)
    result = dict(device=torch.cuda.get_device_name(), sparsity=args.sparsity, checks={}, rows=[])
    ok = {}
    for name, cfg in configs.items():
        try:
            err = check(shape, cfg, keep)
        except Exception as exc:  # a config the compiler rejects is recorded, not fatal
            err = math.inf
            print(f"{name}: failed: {exc}", flush=True)
        result["checks"][name] = err
        ok[name] = err <= 1e-2
        print(f"check {name}: rel err {err:.2e} {'ok' if ok[name] else 'FAILED'}", flush=True)
    for size in args.sizes.split(","):
        b, t = (int(x) for x in size.split("x"))
        dense_us = time_us(dense_decode_call(shape, b, t + WINDOW), args.rep)
        inp = decode_inputs(shape, b, t, keep)
        row = dict(batch=b, tokens=t, dense_us=dense_us, sparse_us={})
        for name, cfg in configs.items():
            if ok[name]:
                row["sparse_us"][name] = time_us(decode_call(inp, cfg), args.rep)
        result["rows"].append(row)
        print(f"B {b} T {t}: dense SDPA {dense_us:.0f} us", flush=True)
        for name, us in sorted(row["sparse_us"].items(), key=lambda kv: kv[1]):
            print(f"  {name:32s} {us:8.0f} us  {dense_us / us:5.2f}x dense", flush=True)
        del inp
        torch.cuda.empty_cache()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep_decode.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
