"""Where a decode call's time goes at issue 16's sizes: each kernel's own duration (CUPTI through torch.profiler,
eager calls with L2 flushed before each) beside the CUDA-graph replay of the whole call (bench_kernels.graph_time),
for the sparse decoder (decode kernel + split merge) and dense SDPA; then, at B 8 / 16K, the graph-replayed time
at other split counts. One JSON line per measurement.

    python3 results/kernels/scatter_h200/run14/fixed/kernel_times.py > kernel_times.jsonl
"""

import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[5] / "scripts"))
from bench_kernels import _rule_sparsity, graph_time, rule_inputs  # noqa: E402

from mustafar.bench.inputs import WINDOW, decode_call, default_launch, dense_decode_call  # noqa: E402
from mustafar.bench.shapes import attention_shape  # noqa: E402

SHAPE = attention_shape("llama3_8b")
RULES = ("nm8ck-fp8-nm4v", "word")
SIZES = ((8, 64), (8, 16384), (8, 32768), (32, 64), (32, 16384), (32, 32768))
FLUSH = torch.empty(512 * 2**20, dtype=torch.int8, device="cuda")


def kernel_us(fn, n: int = 30) -> dict[str, float]:
    """Mean device time per call of each kernel ``fn`` launches (the L2 flush's own kernel left out)."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            FLUSH.zero_()
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" and e.count >= n and "FillFunctor" not in e.key:
            total = getattr(e, "self_device_time_total", None) or e.self_cuda_time_total
            out[e.key[:60]] = round(total / n, 2)
    return out


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


for b, t in SIZES:
    dense = dense_decode_call(SHAPE, b, t + WINDOW)
    emit(what="dense", b=b, t=t, graph_us=round(graph_time(dense), 1), kernels=kernel_us(dense))
    del dense
    for rule in RULES:
        inp = rule_inputs(rule, _rule_sparsity(rule), b, t, SHAPE)
        call = decode_call(inp, {})
        call()
        torch.cuda.synchronize()
        launch = default_launch(inp)
        emit(what=rule, b=b, t=t, splits=launch["num_splits"], graph_us=round(graph_time(call), 1),
             kernels=kernel_us(call))  # fmt: skip
        if (b, t) == (8, 16384):
            for n in (8, 12, 16, 24, 32, 48):
                opts = dict(launch, num_splits=n)
                emit(what=rule, b=b, t=t, splits=n, graph_us=round(graph_time(decode_call(inp, opts)), 1))
        del inp, call
        torch.cuda.empty_cache()
