"""Sweep sparse decode launch configurations against dense SDPA at a few sizes (an exploration tool for the GPU).

Every configuration is first checked against the PyTorch reference on a small case (a failing one is reported and
skipped), then timed (do_bench median, L2 flushed) at each size; prints a table and writes JSON.

  python3 scripts/sweep_decode.py --sizes 8x16384,32x16384 --sparsity 0.7 --out $OUT \
      --configs '{"v3 w4": {"block_n": 64, "num_warps": 4}, "v3 w1": {"block_n": 32, "num_warps": 1}}'

Imports only torch/triton and mustafar's kernels (the device image has no sweep stack).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import HKV, HQ, WINDOW, D, build_stores, rel_err, time_dense, time_sparse  # noqa: E402

from mustafar.formats import CompressedStore, keep_count  # noqa: E402
from mustafar.kernels import sparse_decode_attention  # noqa: E402


def check(cfg: dict, keep: int) -> float:
    """Relative error against the PyTorch reference on a small GQA case with a ragged last tile."""
    torch.manual_seed(0)
    b, t, w = 2, 1000, 17
    q = torch.randn(b, HQ, D, device="cuda", dtype=torch.float16)
    stores = []
    for _ in range(2):
        st = CompressedStore(b, HKV, D, torch.float16, "cuda", keep)
        st.append_topk(torch.randn(b, HKV, t, D, device="cuda", dtype=torch.float16), keep)
        stores.append(st)
    kw = torch.randn(b, HKV, w, D, device="cuda", dtype=torch.float16)
    vw = torch.randn_like(kw)
    ref = sparse_decode_attention(q, *stores, kw, vw, D**-0.5, backend="torch")
    out = sparse_decode_attention(
        q, *stores, kw, vw, D**-0.5, backend="triton", out=torch.full_like(q, math.nan), **cfg
    )
    return math.inf if out.isnan().any() else rel_err(out, ref)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", required=True, help="JSON: name -> sparse_decode_attention launch options")
    ap.add_argument("--sizes", default="8x16384,32x16384", help="comma-separated BATCHxTOKENS")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--rep", type=int, default=60)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    configs = json.loads(args.configs)
    keep = keep_count(D, args.sparsity)
    result = dict(device=torch.cuda.get_device_name(), sparsity=args.sparsity, checks={}, rows=[])
    ok = {}
    for name, cfg in configs.items():
        try:
            err = check(cfg, keep)
        except Exception as exc:  # a config the compiler rejects is recorded, not fatal
            err = math.inf
            print(f"{name}: failed: {exc}", flush=True)
        result["checks"][name] = err
        ok[name] = err <= 1e-2
        print(f"check {name}: rel err {err:.2e} {'ok' if ok[name] else 'FAILED'}", flush=True)
    for size in args.sizes.split(","):
        b, t = (int(x) for x in size.split("x"))
        q = torch.randn(b, HQ, D, device="cuda", dtype=torch.float16)
        ks, vs = build_stores(b, t, keep)
        kw = torch.randn(b, HKV, WINDOW, D, device="cuda", dtype=torch.float16)
        vw = torch.randn_like(kw)
        k_dense, v_dense = (
            torch.randn(b, HKV, t + WINDOW, D, device="cuda", dtype=torch.float16) for _ in range(2)
        )
        dense_us = time_dense(q.unsqueeze(2), k_dense, v_dense, args.rep)  # distinct K and V: no L2 reuse
        del k_dense, v_dense
        row = dict(batch=b, tokens=t, dense_us=dense_us, sparse_us={})
        for name, cfg in configs.items():
            if ok[name]:
                row["sparse_us"][name] = time_sparse(q, ks, vs, kw, vw, cfg, args.rep)
        result["rows"].append(row)
        print(f"B {b} T {t}: dense SDPA {dense_us:.0f} us", flush=True)
        for name, us in sorted(row["sparse_us"].items(), key=lambda kv: kv[1]):
            print(f"  {name:32s} {us:8.0f} us  {dense_us / us:5.2f}x dense", flush=True)
        del ks, vs
        torch.cuda.empty_cache()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep_decode.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
