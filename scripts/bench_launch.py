"""Launch cost of the sparse decode op (GPU): eager µs/call against CUDA-graph replay, next to dense SDPA.

At Llama-3-8B decode shapes (32 query heads, 8 KV heads, head_dim 128, fp16, a dense window of 32 tokens), for
batch 1 and 8, 16K compressed tokens, sparsity 0.5 and 0.7 (fixed layout, keep 64 / 38 of 128) and each keep rule
of ``--keep-rules`` (``exact``: the staged decoder; ``word``: word-quota stores, the scatter decoder; ``word-fp8``:
the same with fp8 values), times

* ``sparse dynamic``: the public op on today's stores (host-side length, split plan per length; after the first few
  calls, eager calls replay the previous call's launches in one C call with the length patched in, ``decode._Plan``);
* ``sparse static``: the public op on static stores of capacity = tokens (device-side length, plan per capacity;
  after the first few calls, eager calls replay the previous call's launches in one C call,
  ``launch_seq.LaunchSequence``);
* ``sparse static 2x``: the same 16K tokens in static stores of twice that capacity (the plan's splits past the
  length run empty: what sizing a store for prompt + new tokens costs while it is half full);
* ``dense``: ``scaled_dot_product_attention(enable_gqa=True)`` of one query over 16K dense K and V;

each as back-to-back eager calls (wall µs/call; ``host`` = µs/call to enqueue them, i.e. the Python and launch
cost while the GPU keeps up) and as one captured call replayed back to back (``graph``), plus the graph replay's GPU
time with L2 flushed between calls (``gpu``, ``triton.testing.do_bench``: the number ``bench_kernels.py`` reports).
``eager - graph`` is the host overhead eager mode does not hide. The static and dynamic outputs are compared (they
must agree to fp16 rounding).

Imports only the standard library, torch, triton and mustafar's library modules (no pandas / hydra).

Usage: python3 scripts/bench_launch.py --out DIR [--quick] [--keep-rules exact,word,word-fp8]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mustafar.formats import CompressedStore  # noqa: E402
from mustafar.kernels import pack_into, sparse_decode_attention, topk_pack_into  # noqa: E402
from mustafar.kernels.decode import _planned_splits  # noqa: E402
from mustafar.kernels.dispatch import decoder_for  # noqa: E402
from mustafar.pruning.keep import word_topk_mask  # noqa: E402

HQ, HKV, D, WINDOW, TOKENS = 32, 8, 128, 32, 16384
KEEPS = {0.5: 64, 0.7: 38}  # kept values per token of 128 at each sparsity
VARIANTS = (  # name, store capacity, static
    ("sparse dynamic", TOKENS, False),
    ("sparse static", TOKENS, True),
    ("sparse static 2x", 2 * TOKENS, True),
)
RULES = {
    "exact": (False, "native"),
    "word": (True, "native"),
    "word-fp8": (True, "fp8"),
}  # word quota, values


def _stores(
    batch: int, keep: int, capacity: int, static: bool, seed: int, rule: str = "exact"
) -> tuple[CompressedStore, CompressedStore]:
    """K and V stores of ``TOKENS`` N(0, 1) rows under keep ``rule`` (same rows for every variant of a seed)."""
    word_quota, value_dtype = RULES[rule]
    g = torch.Generator(device="cuda").manual_seed(seed)
    out = []
    for _ in "kv":
        st = CompressedStore(
            batch, HKV, D, torch.float16, "cuda", keep, capacity=capacity, static=static,
            word_quota=word_quota, value_dtype=value_dtype,
        )  # fmt: skip
        for _ in range(0, TOKENS, 4096):
            rows = torch.randn(batch, HKV, 4096, D, device="cuda", dtype=torch.float16, generator=g)
            if word_quota:
                pack_into(st, rows, word_topk_mask(rows.abs(), keep))
            else:
                topk_pack_into(st, rows, keep)
        out.append(st)
    return out[0], out[1]


def _eager(fn, calls: int, repeats: int = 5) -> tuple[float, float]:
    """(wall µs/call, enqueue µs/call) of ``calls`` back-to-back calls: the medians of ``repeats`` windows, as one
    pause of the host (a garbage collection, the VM) adds tens of µs per call to a short window."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    walls, hosts = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        walls.append((t2 - t0) / calls * 1e6)
        hosts.append((t1 - t0) / calls * 1e6)
    return statistics.median(walls), statistics.median(hosts)


def _graph(fn, calls: int, rep_ms: int) -> tuple[float, float]:
    """(wall µs/replay back to back, do_bench GPU µs/replay with L2 flushed) of one captured call."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    wall, _ = _eager(graph.replay, calls)
    gpu = do_bench(graph.replay, warmup=10, rep=rep_ms, return_mode="median") * 1e3
    return wall, gpu


def _row(
    op: str, rule: str | None, batch: int, sparsity: float | None, fn, calls: int, rep_ms: int, **extra
) -> dict:
    eager, host = _eager(fn, calls)
    graph, gpu = _graph(fn, calls, rep_ms)
    row = dict(
        op=op,
        rule=rule,
        batch=batch,
        sparsity=sparsity,
        eager_us=eager,
        host_us=host,
        graph_us=graph,
        gpu_us=gpu,
    )
    row.update(extra)
    print(
        f"  {op:16s} {rule or '':8s} B={batch} s={sparsity}: eager {eager:7.1f}  host {host:6.1f}  "
        f"graph {graph:7.1f}  gpu {gpu:7.1f} µs/call",
        flush=True,
    )
    return row


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Sparse decode launch cost: eager vs CUDA-graph replay vs dense SDPA",
        "",
        f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}. Llama-3-8B decode shapes "
        f"(H_q {HQ}, H_kv {HKV}, D {D}, fp16), {TOKENS} compressed tokens + a {WINDOW}-token dense window "
        f"(dense: {TOKENS} tokens). Command: `{meta['command']}`.",
        "",
        "µs per call. eager / graph: back-to-back calls (wall clock / calls, median of 5 windows); host: time to enqueue the eager calls "
        "(Python + launch); gpu: graph replay with L2 flushed (do_bench median); eager − graph: host overhead "
        "eager mode does not hide.",
        "",
        "| op | keep rule (decoder) | B | s | eager | host | graph | gpu | eager − graph | splits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = "—" if r["sparsity"] is None else f"{r['sparsity']}"
        lines.append(
            f"| {r['op']} | {_rule_cell(r)} | {r['batch']} | {s} | {r['eager_us']:.1f} | {r['host_us']:.1f} | {r['graph_us']:.1f} | "
            f"{r['gpu_us']:.1f} | {r['eager_us'] - r['graph_us']:.1f} | {r.get('splits', '—')} |"
        )
    return "\n".join(lines) + "\n"


def _rule_cell(row: dict) -> str:
    return "—" if row.get("rule") is None else f"{row['rule']} ({row['decoder']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="fewer calls per timing")
    ap.add_argument(
        "--keep-rules", default="exact,word,word-fp8", help=f"comma-separated, of {sorted(RULES)}"
    )
    args = ap.parse_args()
    rules = args.keep_rules.split(",")
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        sys.exit(f"--keep-rules: unknown rule(s) {unknown}; choose from {sorted(RULES)}")
    if not torch.cuda.is_available():
        sys.exit("bench_launch.py needs a CUDA GPU")
    calls, rep_ms = (100, 30) if args.quick else (400, 100)
    args.out.mkdir(parents=True, exist_ok=True)
    import triton

    meta = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        command="python3 " + " ".join(sys.argv),
    )
    rows = []
    for batch in (1, 8):
        q = torch.randn(batch, HQ, D, device="cuda", dtype=torch.float16)
        kw, vw = (torch.randn(batch, HKV, WINDOW, D, device="cuda", dtype=torch.float16) for _ in "kv")
        for rule in rules:
            for sparsity, keep in KEEPS.items():
                dynamic = None
                for name, capacity, static in VARIANTS:
                    ks, vs = _stores(batch, keep, capacity, static, seed=batch * 10 + keep, rule=rule)
                    out = torch.empty_like(q)
                    call = functools.partial(sparse_decode_attention, q, ks, vs, kw, vw, D**-0.5, out=out)
                    call()  # compiles and measures the occupancy the plan uses
                    decoder = decoder_for(q, ks, vs)
                    splits = _planned_splits(q, ks, vs, decoder)
                    rows.append(
                        _row(name, rule, batch, sparsity, call, calls, rep_ms, splits=splits, decoder=decoder)
                    )
                    got = call().float()
                    if dynamic is None:
                        dynamic = got
                    err = ((got - dynamic).norm() / dynamic.norm()).item()
                    rows[-1]["rel_err_vs_dynamic"] = err
                    if err > 1e-2:
                        sys.exit(
                            f"{name} ({rule}) and the dynamic decode disagree at B={batch}, s={sparsity}: {err:.2e}"
                        )
                    del ks, vs, call
        qd = q.unsqueeze(2)
        k, v = (torch.randn(batch, HKV, TOKENS, D, device="cuda", dtype=torch.float16) for _ in "kv")
        rows.append(
            _row(
                "dense sdpa",
                None,
                batch,
                None,
                functools.partial(F.scaled_dot_product_attention, qd, k, v, enable_gqa=True),
                calls,
                rep_ms,
            )
        )
        del k, v
    (args.out / "bench_launch.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    (args.out / "bench_launch.md").write_text(_markdown(rows, meta))
    print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
