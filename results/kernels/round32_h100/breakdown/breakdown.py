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


def kernels(fn) -> dict:
    """Mean GPU µs per call of each kernel `fn` launches (and how many per call), and the mean span from its first
    kernel's start to its last one's end: span minus the kernels' sum is the gaps. The flush is told apart by its
    length (zeroing 256 MB takes ~80 µs; no kernel of the op under test is a fill that long)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            flush.zero_()
            fn()
        torch.cuda.synchronize()
    gpu = sorted((ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA),
                 key=lambda ev: ev.time_range.start)
    total, count, calls, current = defaultdict(float), defaultdict(int), [], []
    for ev in gpu:
        if "Fill" in ev.name and ev.device_time_total > 20:
            if current:
                calls.append(current)
            current = []
            continue
        total[ev.name[:60]] += ev.device_time_total
        count[ev.name[:60]] += 1
        current.append(ev)
    if current:
        calls.append(current)
    spans = [max(e.time_range.end for e in c) - min(e.time_range.start for e in c) for c in calls]
    sums = [sum(e.device_time_total for e in c) for c in calls]
    return dict(per_kernel_us={k: round(v / CALLS, 2) for k, v in total.items()},
                per_call={k: round(v / CALLS, 2) for k, v in count.items()}, calls_seen=len(calls),
                span_us=round(sum(spans) / max(len(spans), 1), 2), kernels_sum_us=round(sum(sums) / max(len(sums), 1), 2))


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
