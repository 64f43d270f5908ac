"""Round-23 A/B: python3 ab_nm16.py TAG PAD [OPERAND] -- graph-replayed times of the scatter decoder on fp8 K 5:16c +
V 5:16 stores (s 0.6875) with the 5:16 sides' staged stride padded by PAD bytes (decode.KEY16_PAD) and, OPERAND
1 or 0 (default: the module's), the values expanded into the P·V operand or into a row tile
(decode.VALUES_IN_OPERAND), at three sizes of Llama-3-8B attention; one JSON row per size. Run from the
repository root."""

import json
import math
import sys

import torch

sys.path.insert(0, "scripts")
from bench_kernels import graph_time  # noqa: E402

from mustafar.bench.inputs import WINDOW, decode_call, decode_inputs, dense_decode_call, rel_err  # noqa: E402
from mustafar.bench.shapes import attention_shape  # noqa: E402
from mustafar.kernels import decode, sparse_decode_attention  # noqa: E402
from mustafar.pruning.keep import exact_keep  # noqa: E402

tag, pad = sys.argv[1], int(sys.argv[2])
decode.KEY16_PAD = pad
if len(sys.argv) > 3:
    if not int(sys.argv[3]):  # after round 24's review 5:16 values always go into the operand
        sys.exit("OPERAND 0: the row-tile path for 5:16 values was removed after round 24's A/B (NOTES round 24)")
    decode.VALUES_IN_OPERAND = frozenset({"fp8", "native"})
shape = attention_shape("llama3_8b")
keep = exact_keep(shape.head_dim, 0.6875)
extra = dict(word_quota=True, value_dtype="fp8", k_nm_group=16, v_nm_group=16, k_calibrated=True)
small = decode_inputs(shape, 2, 1000, keep, window=17, **extra)
ref = sparse_decode_attention(
    small.q, small.k_store, small.v_store, small.k_window, small.v_window, small.scale, backend="torch"
)
o = decode_call(small, {}, out=torch.full_like(small.q, math.nan))()
err = math.inf if o.isnan().any() else rel_err(o, ref)
for b, t in ((8, 32768), (32, 16384), (32, 32768)):
    dense = graph_time(dense_decode_call(shape, b, t + WINDOW))
    inp = decode_inputs(shape, b, t, keep, **extra)
    call = decode_call(inp, {})
    call()
    torch.cuda.synchronize()
    us = graph_time(call)
    row = dict(
        tag=tag,
        pad=pad,
        operand="fp8" in decode.VALUES_IN_OPERAND,
        b=b,
        t=t,
        dense=round(dense, 1),
        us=round(us, 1),
        x=round(dense / us, 3),
        err=err,
    )
    print(json.dumps(row), flush=True)
    del inp
    torch.cuda.empty_cache()
