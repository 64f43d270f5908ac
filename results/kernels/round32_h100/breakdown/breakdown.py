"""Round 32, where a call's time goes at issue 16's size: each kernel's own GPU time (CUPTI, via torch.profiler)
for the default launch of `word` fp8 s 0.7 and of dense SDPA, L2 flushed before every call as the bench does, at
B 8 and 512 ... 32K tokens; beside it the graph-replayed time of the whole call (bench_kernels.graph_time). What
the line through the sizes leaves per call, split into decoder, merge and the gaps between them.
Usage: python3 results/kernels/round32_h100/breakdown/breakdown.py (repository root)."""
import json, sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path.cwd())); sys.path.insert(0, str(Path.cwd() / "scripts"))
import torch
from torch.profiler import ProfilerActivity, profile
from mustafar.bench.inputs import WINDOW, decode_call, default_launch, dense_decode_call
from mustafar.bench.shapes import attention_shape
from bench_kernels import graph_time, rule_inputs

shape = attention_shape("llama3_8b")
flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
CALLS = 30


def kernels(fn) -> dict[str, float]:
    """Mean GPU µs per call of each kernel `fn` launches (the flush's zeroing left out)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            flush.zero_()
            fn()
        torch.cuda.synchronize()
    total = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and "elementwise" not in ev.name and "fill" not in ev.name.lower():
            total[ev.name[:60]] += ev.device_time_total
    return {k: round(v / CALLS, 2) for k, v in total.items()}


for t in (512, 2048, 8192, 16384, 32768):
    inp = rule_inputs("word-fp8", 0.7, 8, t, shape)
    call = decode_call(inp, {})
    call(); torch.cuda.synchronize()
    launch = default_launch(inp)
    dense = dense_decode_call(shape, 8, t + WINDOW)
    row = dict(b=8, t=t, splits=launch["num_splits"], sparse_kernels=kernels(call), dense_kernels=kernels(dense),
               sparse_graph_us=round(graph_time(call), 2), dense_graph_us=round(graph_time(dense), 2))
    print(json.dumps(row), flush=True)
    del inp, call, dense
    torch.cuda.empty_cache()
