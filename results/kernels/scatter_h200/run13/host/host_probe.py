"""Round 24 host-cost probe: python3 host_probe.py -- where the public sparse decode op spends its host time at
B 1 / 4K (every call host-bound): enqueue µs per call (median of five 500-call windows, back to back) per format,
then a cProfile of 3,000 calls of two formats (top 22 functions by own time; cProfile inflates every Python call
alike, so read it as shares). Run from the repository root."""

import cProfile
import io
import pstats
import statistics
import time

import torch

from mustafar.bench.inputs import decode_call, decode_inputs
from mustafar.bench.shapes import attention_shape

FORMATS = {
    "word s0.7": (38, {}),
    "word-fp8 s0.7": (38, dict(value_dtype="fp8")),
    "nm8ck-fp8-nm4v s0.5": (64, dict(value_dtype="fp8", k_nm_group=8, v_nm_group=4, k_calibrated=True)),
    "nm16ck-fp8-nm16v s0.6875": (40, dict(value_dtype="fp8", k_nm_group=16, v_nm_group=16, k_calibrated=True)),
}
shape = attention_shape("llama3_8b")
calls = {}
for name, (keep, extra) in FORMATS.items():
    inp = decode_inputs(shape, 1, 4096, keep, word_quota=True, **extra)
    out = torch.empty_like(inp.q)
    calls[name] = decode_call(inp, {}, out=out)
    calls[name]()
torch.cuda.synchronize()


def enqueue_us(fn, n=500):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return host


for name, fn in calls.items():
    print(f"{name}: enqueue {statistics.median(enqueue_us(fn) for _ in range(5)):.1f} us/call", flush=True)
for name in ("word-fp8 s0.7", "nm8ck-fp8-nm4v s0.5"):
    fn = calls[name]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(3000):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(22)
    print(f"== {name}\n{s.getvalue()}", flush=True)
