"""End-to-end decode benchmark on a GPU: dense (stock cache + SDPA) vs compressed Mustafar caches, eager and static.

Random-weight Llama-family models (speed does not depend on weight values) at a fixed context. For each KV
format and batch size it measures the per-step decode latency (CUDA events, median over steps after warm-up),
tokens/s, peak memory, KV-cache bytes read off the allocator, the largest batch that fits, and TTFT (a real
prefill, pruning and compression included). A per-step decomposition separates weights (a step over a tiny
context), attention (the attention kernels alone over all layers) and everything else.

Static formats (`*-static`: `mustafar.static_cache`, storage sized for the run, device-side indices) are measured
three ways per batch: eager wall clock, GPU kernel time (profiler), and CUDA-graph replay (`mustafar.graphs`):
wall clock of a replayed greedy loop next to its GPU time from CUDA events around each replay. Their largest
batch is estimated from the cache bytes of one sequence and the free memory, then verified by a run.

Needs only torch, triton and transformers (runs on the lent GPU machine without the sweep stack):
    python scripts/bench_decode.py --model llama3_8b --context 16384 --out results/decode
    python scripts/bench_decode.py --quick --out results/decode   # static formats only, B = 1, 8, max (~5 min)
On a CPU it refuses: speed and memory are only ever reported from a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# Every format is measured with expandable segments: without them the caching allocator fragments (persistent
# stores of odd sizes between 1 GiB fill transients) and "largest batch" measures fragmentation, not capacity.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import DynamicCache  # noqa: E402
from transformers.cache_utils import Cache, DynamicLayer  # noqa: E402

from mustafar.attention import attach, new_cache  # noqa: E402
from mustafar.bench.random_model import build_model  # noqa: E402
from mustafar.bench.shapes import ARCHS  # noqa: E402
from mustafar.cache import MustafarCache  # noqa: E402
from mustafar.config import KVConfig  # noqa: E402
from mustafar.graphs import DecodeRunner  # noqa: E402
from mustafar.pruning import Observation  # noqa: E402
from mustafar.static_cache import StaticMustafarCache  # noqa: E402

PREALLOC_STEPS = 256  # decode room in the preallocated dense baseline (the benchmark takes < 40 steps)
FORMATS = {
    "dense": None,  # transformers' DynamicCache: torch.cat of the whole cache every step (the stock path)
    "dense-prealloc": None,  # dense written in place into a buffer sized for the run: the fair baseline
    "K0.5V0.5": KVConfig(k_sparsity=0.5, v_sparsity=0.5, mode="compressed"),
    "K0.7V0.7": KVConfig(k_sparsity=0.7, v_sparsity=0.7, mode="compressed"),
}


def _static_formats() -> dict[str, KVConfig]:
    """Static caches, decoded eagerly and graph-replayed: each compressed format in fp16/bf16 values and, for the
    scatter decoder's stores, with fp8 kept values too (e4m3 + a power-of-two scale per token-head; `-fp8`)."""
    word = dict(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", mode="compressed")
    formats = {
        "dense-static": KVConfig(),
        "K0.5V0.5-static": KVConfig(k_sparsity=0.5, v_sparsity=0.5, mode="compressed"),
        "K0.7V0.7-static": KVConfig(k_sparsity=0.7, v_sparsity=0.7, mode="compressed"),
    }
    scatter = {
        # the word keep rule: same keep counts, quotas per 32-channel word; the scatter decoder reads it
        ("K0.5V0.5-word", "-static"): KVConfig(**word),
        ("K0.7V0.7-word", "-static"): KVConfig(**{**word, "k_sparsity": 0.7, "v_sparsity": 0.7}),
        # V kept two of every four consecutive channels: the scatter decoder expands its rows instead of scattering
        ("K0.5V0.5-word", "-nm4v-static"): KVConfig(**word, v_keep_rule="nm4"),
        # K kept four of every eight strided channels too: keys expanded and scored by an MMA (round 16)
        ("K0.5V0.5-nm8sk", "-nm4v-static"): KVConfig(**word, k_keep_rule="nm8s", v_keep_rule="nm4"),
        # K 4:8 groups calibrated per (row, head) at prefill (`nm8c`): q gathered through each head's order
        ("K0.5V0.5-nm8ck", "-nm4v-static"): KVConfig(**word, k_keep_rule="nm8c", v_keep_rule="nm4"),
    }
    for (head, tail), policy in scatter.items():
        formats[head + tail] = policy
        formats[f"{head}-fp8{tail}"] = replace(policy, value_dtype="fp8")
    # K 5:16 calibrated + V 5:16 in fp8 codes at s 0.6875 (kv=k69v69_kn16c_vnm16_fp8): both expanded (round 23)
    formats["K0.6875V0.6875-nm16ck-fp8-nm16v-static"] = KVConfig(
        **{**word, "k_sparsity": 0.6875, "v_sparsity": 0.6875},
        k_keep_rule="nm16c",
        v_keep_rule="nm16",
        value_dtype="fp8",
    )
    return formats


STATIC_FORMATS = _static_formats()
ACTIVATION_RESERVE_GIB = (
    6.0  # left free when estimating the largest static batch (logits, scratch, graph pool)
)


@dataclass
class Point:
    arch: str
    fmt: str
    batch: int
    context: int
    step_ms: float | None = None  # wall clock per step (CPU-bound on a slow host: see gpu_ms)
    tokens_per_s: float | None = None
    gpu_ms: float | None = None  # GPU kernel time of one step (what a launch-overhead-free step costs)
    gpu_tokens_per_s: float | None = None
    gemm_ms: float | None = None
    attention_ms: float | None = None
    compression_ms: float | None = None
    other_ms: float | None = None
    kv_bytes: int | None = None  # allocated cache tensors after the decode steps (capacity slack included)
    kv_fraction_of_dense: float | None = None
    peak_gib: float | None = None
    oom: bool = False
    event_ms: float | None = None  # median CUDA-event window per eager step (≈ wall when launch-bound)
    graph_step_ms: float | None = None  # wall clock per step of a graph-replayed greedy loop
    graph_tokens_per_s: float | None = None
    graph_event_ms: float | None = None  # GPU time per replayed step (CUDA events around each replay)
    graph_blocker: str | None = None  # why the step was not captured (then the graph columns are empty)


class PreallocatedDenseLayer(DynamicLayer):
    """A dense layer without the stock per-step copy: one buffer sized for the run, exact-length views (so SDPA
    keeps its mask-free flash path), as a serving engine's preallocated or paged cache would."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        b, h, _, d = key_states.shape
        self.k_buf = torch.empty(b, h, self.capacity, d, dtype=key_states.dtype, device=key_states.device)
        self.v_buf = torch.empty_like(self.k_buf)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[2]
        self.k_buf[:, :, self.length : self.length + n] = key_states
        self.v_buf[:, :, self.length : self.length + n] = value_states
        self.length += n
        self.keys, self.values = self.k_buf[:, :, : self.length], self.v_buf[:, :, : self.length]
        return self.keys, self.values


def cache_storages(cache) -> list[torch.Tensor]:
    out = []
    for layer in cache.layers:
        if hasattr(layer, "ring_k"):  # static compressed: a dense ring of window+1 slots
            out += [layer.ring_k, layer.ring_v]
        else:
            out += [getattr(layer, "k_buf", layer.keys), getattr(layer, "v_buf", layer.values)]
        for store in getattr(layer, "stores", {}).values():
            out += [
                getattr(store, n) for n in ("bits", "vals", "offs", "row_nnz", "scales") if hasattr(store, n)
            ]
    return out


def fill_cache(model, fmt: str, batch: int, context: int):
    """A cache holding `context` random post-RoPE tokens, built the way a prefill leaves it (compressed via the
    same after-attention path, so the real compression kernel runs)."""
    c = model.config
    shape = (batch, c.num_key_value_heads, context, c.head_dim)
    dev, dtype = model.device, model.dtype
    if fmt in STATIC_FORMATS:
        cache = StaticMustafarCache(
            STATIC_FORMATS[fmt], c.num_hidden_layers, context + PREALLOC_STEPS, c.head_dim
        )
        with attach(model, cache):
            for layer in cache.layers:
                k, v = (
                    torch.randn(shape, device=dev, dtype=dtype),
                    torch.randn(shape, device=dev, dtype=dtype),
                )
                layer.update(k, v)
                layer.after_attention(Observation(q_len=context))
        return cache
    if fmt == "dense-prealloc":
        cache = Cache(
            layers=[PreallocatedDenseLayer(context + PREALLOC_STEPS) for _ in range(c.num_hidden_layers)]
        )
        for layer in cache.layers:
            layer.update(
                torch.randn(shape, device=dev, dtype=dtype), torch.randn(shape, device=dev, dtype=dtype)
            )
        return cache
    if FORMATS[fmt] is None:
        cache = DynamicCache(config=c)
        for i in range(c.num_hidden_layers):
            cache.update(
                torch.randn(shape, device=dev, dtype=dtype), torch.randn(shape, device=dev, dtype=dtype), i
            )
        return cache
    cache = new_cache(model, FORMATS[fmt])
    with attach(model, cache):
        for layer in cache.layers:
            k, v = torch.randn(shape, device=dev, dtype=dtype), torch.randn(shape, device=dev, dtype=dtype)
            layer.update(k, v)
            layer.after_attention(Observation(q_len=context))
    return cache


def cache_bytes(cache) -> int:
    """Bytes of every tensor the cache holds (allocated buffers, capacity slack included)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache_storages(cache)}
    return sum(storages.values())


def decode_steps(model, cache, batch: int, context: int, steps: int, warmup: int = 3) -> list[float]:
    """Per-step latencies (ms) of `steps` single-token forward passes."""
    dev = model.device
    tok = torch.randint(0, model.config.vocab_size, (batch, 1), device=dev)
    times = []
    with torch.inference_mode(), attach(model, cache) if isinstance(cache, MustafarCache) else nullcontext():
        for i in range(warmup + steps):
            pos = torch.full((batch, 1), context + i, device=dev)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = model(
                input_ids=tok, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1
            )
            end.record()
            tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(end))
    return times


CATEGORIES = (  # kernel name fragments -> what the time is spent on
    ("compression", ("_prune_pack", "_topk_pack", "_pack_kernel")),
    ("attention", ("flash", "fmha", "attention", "_sparse_decode", "_merge_kernel", "sdpa")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_")),
)


def gpu_breakdown(model, cache, batch: int, context: int) -> dict[str, float]:
    """GPU kernel time (ms) of one decode step by category, from the profiler (median of 3 profiled steps)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    tok = torch.zeros(batch, 1, dtype=torch.long, device=model.device)
    runs = []
    with torch.inference_mode(), attach(model, cache) if isinstance(cache, MustafarCache) else nullcontext():
        for i in range(3):
            pos = torch.full((batch, 1), context + 100 + i, device=model.device)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                model(
                    input_ids=tok, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1
                )
                torch.cuda.synchronize()
            spent = {"gemm": 0.0, "attention": 0.0, "compression": 0.0, "other": 0.0}
            for e in prof.events():
                if e.device_type != DeviceType.CUDA:
                    continue
                cat = next((c for c, keys in CATEGORIES if any(k in e.name for k in keys)), "other")
                spent[cat] += e.time_range.elapsed_us() / 1000
            runs.append(spent)
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}


def timed_loop(
    runner: DecodeRunner, tok: torch.Tensor, position: int, steps: int
) -> tuple[float, float, int]:
    """(wall ms per step, median CUDA-event ms per step, next position) of a greedy loop of `steps` runner steps;
    the host never waits inside the loop, as in real generation."""
    batch = tok.shape[0]
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)
    ]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i, (start, end) in enumerate(events):
        pos = torch.full((batch, 1), position + i, device=tok.device)
        start.record()
        tok = runner.step(tok, pos).argmax(-1, keepdim=True)
        end.record()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1000 / steps
    return wall, statistics.median(s.elapsed_time(e) for s, e in events), position + steps


def measure_static(model, point: Point, cache: StaticMustafarCache, steps: int, profile_gpu: bool) -> None:
    """Eager wall/event time, GPU kernel time, then graph-replayed wall/event time, on one static cache."""
    batch, context = point.batch, point.context
    tok = torch.randint(0, model.config.vocab_size, (batch, 1), device=model.device)
    with attach(model, cache):
        eager = DecodeRunner(model, cache, graphs=False)
        _, _, position = timed_loop(eager, tok, context, 3)  # warm-up
        wall, event, position = timed_loop(eager, tok, position, steps)
        point.step_ms, point.event_ms = round(wall, 3), round(event, 3)
        point.tokens_per_s = round(batch * 1000 / wall, 1)
        graphed = DecodeRunner(model, cache, graphs=True)
        point.graph_blocker = graphed.blocker
        if graphed.blocker is None:
            _, _, position = timed_loop(graphed, tok, position, 3)  # warm-up and capture
            wall, event, position = timed_loop(graphed, tok, position, steps)
            point.graph_step_ms, point.graph_event_ms = round(wall, 3), round(event, 3)
            point.graph_tokens_per_s = round(batch * 1000 / wall, 1)
    if profile_gpu:
        record_gpu_parts(point, gpu_breakdown(model, cache, batch, position), batch)


def record_gpu_parts(point: Point, parts: dict[str, float], batch: int) -> None:
    """A step's GPU kernel time, in total and by kind (gemm, attention, compression, other)."""
    point.gpu_ms = round(sum(parts.values()), 3)
    point.gpu_tokens_per_s = round(batch * 1000 / point.gpu_ms, 1)
    point.gemm_ms, point.attention_ms = parts["gemm"], parts["attention"]
    point.compression_ms, point.other_ms = parts["compression"], parts["other"]


def measure(
    model, arch: str, fmt: str, batch: int, context: int, steps: int, profile_gpu: bool = True
) -> Point:
    point = Point(arch, fmt, batch, context)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        cache = fill_cache(model, fmt, batch, context)
        torch.cuda.synchronize()
        if fmt in STATIC_FORMATS:
            measure_static(model, point, cache, steps, profile_gpu)
            profile_gpu = False
        else:
            times = decode_steps(model, cache, batch, context, steps)
            point.step_ms = round(statistics.median(times), 3)
            point.tokens_per_s = round(batch * 1000 / point.step_ms, 1)
        if profile_gpu:
            record_gpu_parts(point, gpu_breakdown(model, cache, batch, context), batch)
        point.kv_bytes = cache_bytes(cache)
        c = model.config
        dense = (
            2
            * c.num_hidden_layers
            * batch
            * c.num_key_value_heads
            * context
            * c.head_dim
            * model.dtype.itemsize
        )
        point.kv_fraction_of_dense = round(point.kv_bytes / dense, 4)
        point.peak_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del cache
    except torch.OutOfMemoryError as err:
        point.oom = True
        print(f"OOM {fmt} batch {batch}: {str(err).splitlines()[0]}", flush=True)
    gc.collect()  # a failed probe's half-built cache must not shrink the next probe's memory
    torch.cuda.empty_cache()
    return point


def largest_batch(model, arch: str, fmt: str, context: int, start: int) -> tuple[int, Point | None]:
    """Largest batch whose cache fits and decodes (doubling, then bisection)."""
    lo, hi, best = 0, start, None
    while True:
        p = measure(model, arch, fmt, hi, context, steps=3, profile_gpu=False)
        if p.oom:
            break
        lo, best, hi = hi, p, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        p = measure(model, arch, fmt, mid, context, steps=3, profile_gpu=False)
        if p.oom:
            hi = mid
        else:
            lo, best = mid, p
    return lo, best


def largest_static_batch(model, arch: str, fmt: str, context: int, steps: int) -> tuple[int, Point | None]:
    """The largest batch a static format holds: (free memory - a reserve) / (one sequence's cache bytes + its
    share of the fill's transient: one layer's random K and V), exact up to the reserve because static storage is
    allocated up front; verified by a measured run and lowered by 10 % per OOM."""
    one = fill_cache(model, fmt, 1, context)
    c = model.config
    per_sequence = cache_bytes(one) + 2 * c.num_key_value_heads * context * c.head_dim * model.dtype.itemsize
    del one
    gc.collect()
    torch.cuda.empty_cache()
    free = torch.cuda.get_device_properties(model.device).total_memory - torch.cuda.memory_allocated()
    batch = int((free - ACTIVATION_RESERVE_GIB * 2**30) // per_sequence)
    for _ in range(5):
        if batch < 1:
            return 0, None
        p = measure(model, arch, fmt, batch, context, steps, profile_gpu=False)
        if not p.oom:
            return batch, p
        batch = int(batch * 0.9)
    return 0, None


def ttft(model, fmt: str, context: int, repeats: int = 3) -> float:
    """Seconds from prompt to first token at batch 1 (prefill + pruning + compression), median of repeats."""
    ids = torch.randint(0, model.config.vocab_size, (1, context), device=model.device)
    out = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            if FORMATS[fmt] is None:  # the prefill is the same for both dense caches
                model(input_ids=ids, past_key_values=DynamicCache(config=model.config), logits_to_keep=1)
            else:
                cache = new_cache(model, FORMATS[fmt])
                with attach(model, cache):
                    model(input_ids=ids, past_key_values=cache, logits_to_keep=1)
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return round(statistics.median(out[1:]), 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama3_8b", choices=sorted(ARCHS))
    ap.add_argument("--context", type=int, default=16384)
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument(
        "--formats", default=None, help="comma-separated; default: all (--quick: the static ones)"
    )
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--max-batch", action="store_true", help="search each format's largest batch")
    ap.add_argument("--out", default="results/decode")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="static formats only, batches 1,8 and the largest, 8 steps, no TTFT",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.formats = args.formats or ",".join(STATIC_FORMATS)
        args.batches, args.steps, args.max_batch = "1,8", 8, True
    args.formats = args.formats or ",".join([*FORMATS, *STATIC_FORMATS])
    if not torch.cuda.is_available():
        print(
            "bench_decode needs a CUDA GPU: speed and memory are never measured on the CPU or in mask mode.",
            file=sys.stderr,
        )
        return 2
    formats = args.formats.split(",")
    unknown = [f for f in formats if f not in FORMATS and f not in STATIC_FORMATS]
    if unknown:
        print(f"unknown format(s) {unknown}; choose from {[*FORMATS, *STATIC_FORMATS]}", file=sys.stderr)
        return 2
    model = build_model(args.model, torch.float16, "cuda")
    batches = [int(b) for b in args.batches.split(",")]
    report = {
        "device": torch.cuda.get_device_name(),
        "host": platform.node(),
        "torch": torch.__version__,
        "model": args.model,
        "context": args.context,
        "command": " ".join(sys.argv),
        "points": [],
        "ttft_s": {},
        "max_batch": {},
        "decomposition": [],
    }
    for fmt in [f for f in formats if f in FORMATS and not args.quick]:  # static prefill = dynamic prefill
        report["ttft_s"][fmt] = ttft(model, fmt, args.context)
        print(f"TTFT {fmt}: {report['ttft_s'][fmt]} s", flush=True)
    for batch in batches:
        for fmt in formats:
            p = measure(model, args.model, fmt, batch, args.context, args.steps)
            report["points"].append(asdict(p))
            print(json.dumps(asdict(p)), flush=True)
    if args.max_batch:
        for fmt in formats:
            if fmt in STATIC_FORMATS:
                b, _ = largest_static_batch(model, args.model, fmt, args.context, steps=3)
            else:
                b, _ = largest_batch(model, args.model, fmt, args.context, start=max(batches))
            p = measure(model, args.model, fmt, b, args.context, args.steps) if b else None
            report["max_batch"][fmt] = {"batch": b, "point": asdict(p) if p else None}
            print(f"max batch {fmt}: {b}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_decode.json").write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    (out / "bench_decode.md").write_text(render(report) + "\n")
    return 0


def render(report: dict) -> str:
    lines = [
        f"{report['model']} random weights, fp16, context {report['context']}, {report['device']}",
        "",
        "| format | batch | wall step ms | wall tok/s | GPU step ms | GPU tok/s | GEMM ms | attention ms | "
        "compression ms | other ms | KV / dense (allocated) | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    points = list(report["points"]) + [mb["point"] for mb in report["max_batch"].values() if mb["point"]]
    static = [p for p in points if p["fmt"] in STATIC_FORMATS]
    points = [p for p in points if p["fmt"] not in STATIC_FORMATS]
    for p in points:
        if p["oom"]:
            lines.append(f"| {p['fmt']} | {p['batch']} | OOM |" + " |" * 10)
            continue
        lines.append(
            f"| {p['fmt']} | {p['batch']} | {p['step_ms']:.1f} | {p['tokens_per_s']:.0f} | {p['gpu_ms']:.2f} | "
            f"{p['gpu_tokens_per_s']:.0f} | {p['gemm_ms']:.2f} | {p['attention_ms']:.2f} | "
            f"{p['compression_ms']:.2f} | {p['other_ms']:.2f} | {p['kv_fraction_of_dense']:.3f} | {p['peak_gib']:.1f} |"
        )
    if static:
        lines += ["", *render_static(static)]
    lines += ["", "| format | TTFT s |", "|---|---|"] + [
        f"| {k} | {v} |" for k, v in report["ttft_s"].items()
    ]
    if report["max_batch"]:
        lines += ["", "| format | largest batch | wall tok/s | GPU tok/s |", "|---|---|---|---|"]
        for fmt, mb in report["max_batch"].items():
            p = mb["point"] or {}
            lines.append(f"| {fmt} | {mb['batch']} | {p.get('tokens_per_s')} | {p.get('gpu_tokens_per_s')} |")
    return "\n".join(lines)


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def render_static(points: list[dict]) -> list[str]:
    """Static formats: eager vs graph-replayed wall clock, next to GPU time (kernel sum; events around replays)."""
    lines = [
        "Static caches: eager vs CUDA-graph replay (wall = greedy loop wall clock; GPU = profiler kernel sum for "
        "eager, CUDA events around each replay for graphs)",
        "",
        "| format | batch | eager wall ms | eager tok/s | eager GPU ms | graph wall ms | graph tok/s | "
        "graph GPU ms | graph wall / GPU | KV / dense (allocated) | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    blockers = set()
    for p in points:
        if p["oom"]:
            lines.append(f"| {p['fmt']} | {p['batch']} | OOM |" + " |" * 8)
            continue
        ratio = (
            p["graph_step_ms"] / p["graph_event_ms"] if p["graph_step_ms"] and p["graph_event_ms"] else None
        )
        if p["graph_blocker"]:
            blockers.add(f"{p['fmt']}: {p['graph_blocker']}")
        lines.append(
            f"| {p['fmt']} | {p['batch']} | {_num(p['step_ms'], '.2f')} | {_num(p['tokens_per_s'], '.0f')} | "
            f"{_num(p['gpu_ms'], '.2f')} | {_num(p['graph_step_ms'], '.2f')} | "
            f"{_num(p['graph_tokens_per_s'], '.0f')} | {_num(p['graph_event_ms'], '.2f')} | {_num(ratio, '.3f')} | "
            f"{_num(p['kv_fraction_of_dense'], '.3f')} | {_num(p['peak_gib'], '.1f')} |"
        )
    lines += [f"- not captured: {b}" for b in sorted(blockers)]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
