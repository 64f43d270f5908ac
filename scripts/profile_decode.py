"""A profiler target: three sparse decode launches (then three dense SDPA ones) at one benchmark size.

Run it under Nsight Compute, e.g.
  ncu --kernel-name regex:_st_sparse_decode_kernel --launch-skip 2 --launch-count 1 --section SpeedOfLight \
      python3 scripts/profile_decode.py --batch 32 --tokens 16384 --sparsity 0.7
``--options`` takes private-launch options (decoder, block_n, num_warps, num_splits; ``{}`` = the default launch),
e.g. ``'{"decoder": "portable"}'`` with ``--kernel-name regex:_sparse_decode_kernel``.
Imports only torch/triton and mustafar library modules (the device image has no sweep stack).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mustafar.bench.inputs import WINDOW, decode_call, decode_inputs, dense_decode_call  # noqa: E402
from mustafar.bench.shapes import attention_shape  # noqa: E402
from mustafar.pruning.keep import exact_keep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--model", default="llama3_8b", help="attention shape (mustafar.bench.shapes.ARCHS)")
    ap.add_argument("--options", default="{}", help="JSON private-launch options ({} = the default launch)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.exit(2, "profile_decode.py needs a CUDA GPU: it profiles the decode kernels there.\n")
    shape = attention_shape(args.model)
    inp = decode_inputs(shape, args.batch, args.tokens, exact_keep(shape.head_dim, args.sparsity))
    sparse = decode_call(inp, json.loads(args.options))
    for _ in range(3):
        sparse()
    dense = dense_decode_call(shape, args.batch, args.tokens + WINDOW)
    for _ in range(3):
        dense()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
