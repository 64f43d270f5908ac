"""A profiler target: three sparse decode launches (then three dense SDPA ones) at one benchmark size.

Run it under Nsight Compute, e.g.
  ncu --kernel-name regex:_sparse_decode_kernel --launch-skip 2 --launch-count 1 --section SpeedOfLight \
      python3 scripts/profile_decode.py --batch 32 --tokens 16384 --sparsity 0.7 --options '{"maxnreg": 128}'
Imports only torch/triton and mustafar's kernels (the device image has no sweep stack).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import HKV, HQ, WINDOW, D, build_stores  # noqa: E402

from mustafar.formats import keep_count  # noqa: E402
from mustafar.kernels import sparse_decode_attention  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--options", default="{}", help="JSON launch options for sparse_decode_attention")
    args = ap.parse_args()
    opts = json.loads(args.options)
    q = torch.randn(args.batch, HQ, D, device="cuda", dtype=torch.float16)
    ks, vs = build_stores(args.batch, args.tokens, keep_count(D, args.sparsity))
    kw = torch.randn(args.batch, HKV, WINDOW, D, device="cuda", dtype=torch.float16)
    vw = torch.randn_like(kw)
    for _ in range(3):
        sparse_decode_attention(q, ks, vs, kw, vw, D**-0.5, **opts)
    k, v = (
        torch.randn(args.batch, HKV, args.tokens + WINDOW, D, device="cuda", dtype=torch.float16)
        for _ in "kv"
    )
    for _ in range(3):
        F.scaled_dot_product_attention(q.unsqueeze(2), k, v, enable_gqa=True)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
