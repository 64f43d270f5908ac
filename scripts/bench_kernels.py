"""GPU check + benchmark of the compressed-KV kernels (imports only torch/triton and mustafar library modules).

1. correctness on the GPU: the default decode and every swept launch against the PyTorch reference (fp16/bf16/fp32,
   D 64/128, fixed and variable layouts, GQA, empty window / empty store, outputs poisoned with NaN), the default
   prune+pack against the exact top-k on Gaussian and tie-heavy rows (contiguous, strided and unaligned rows);
2. the copy roof (device-to-device copy, bytes read + written);
3. decode at Llama-3-8B attention shapes (32 q heads, 8 KV heads, D 128, fp16, a dense window of 32 tokens): dense
   SDPA (enable_gqa) against the public op's default launch at every size, also replayed from a CUDA graph; unless
   ``--default-only``, the other launches of ``CONFIGS`` (private launch) and the default launch at twice / half its
   split count;
4. compression: the default prune+pack and the pack of a given mask (K or V of B 32 x 16K x 8 heads), bytes per token.

``--baseline FILE`` (an earlier bench.json) takes the sizes from that file and puts its default-launch times next
to the new ones.

Usage: python3 scripts/bench_kernels.py --out DIR [--quick] [--default-only] [--baseline results/kernels/bench.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mustafar.bench.inputs import (  # noqa: E402
    WINDOW,
    DecodeInputs,
    decode_call,
    decode_inputs,
    default_kernel_sass,
    default_launch,
    dense_decode_call,
    rel_err,
    time_us,
)
from mustafar.bench.sass import main_loop_instructions  # noqa: E402
from mustafar.bench.shapes import AttentionShape, attention_shape  # noqa: E402
from mustafar.formats import CompressedStore  # noqa: E402
from mustafar.kernels import pack_into, sparse_decode_attention, topk_pack_into  # noqa: E402
from mustafar.pruning.keep import (  # noqa: E402
    exact_keep,
    nm_topk_mask,
    threshold_mask,
    topk_mask,
    word_topk_mask,
)

SHAPE = attention_shape("llama3_8b")
KEEP_RULES = (
    "exact",
    "word",
    "exact-fp8",
    "word-fp8",
    "word-nm4v",
    "word-fp8-nm4v",
    "nm8k-nm4v",
    "nm8sk-nm4v",
    "nm8sk-fp8-nm4v",
    "nm8ck-nm4v",
    "nm8ck-fp8-nm4v",
    "nm16k-fp8-nm16v",
    "nm16ck-fp8-nm16v",
)
CONFIGS = {  # name -> private launch options, timed next to the default launch (round 5 sweeps: NOTES.md)
    "staged n32": dict(decoder="staged", block_n=32),
    "portable n64 w4": dict(decoder="portable", block_n=64, num_warps=4),
    "portable n32 w1": dict(decoder="portable", block_n=32, num_warps=1),
}
REP = 60  # ms of do_bench repetitions per timing


def _rule_sparsity(rule: str) -> float:
    """The one sparsity an expanded V rule's stores hold (two of four: 0.5; five of sixteen: 0.6875), else 0.7."""
    return 0.5 if rule.endswith("-nm4v") else 0.6875 if rule.endswith("-nm16v") else 0.7


def _fits(rule: str, s: float, head_dim: int) -> bool:
    """Whether ``rule``'s stores exist at sparsity ``s`` (expanded V rules keep one fixed count)."""
    if not rule.endswith(("-nm4v", "-nm16v")):
        return True
    return exact_keep(head_dim, s) == exact_keep(head_dim, _rule_sparsity(rule))


def rule_inputs(
    rule: str,
    s: float,
    b: int,
    t: int,
    shape: AttentionShape = SHAPE,
    dtype: torch.dtype = torch.float16,
    **extra,
):
    """One decode step's inputs for keep rule ``rule`` (:data:`KEEP_RULES`) at sparsity ``s`` (``extra``: more
    :func:`~mustafar.bench.inputs.decode_inputs` options, e.g. a shorter window)."""
    return decode_inputs(
        shape,
        b,
        t,
        exact_keep(shape.head_dim, s),
        dtype,
        word_quota=rule.startswith(("word", "nm")),
        # word-fp8, nm8ck-fp8-...: the same stores with e4m3 codes and per-token scales
        value_dtype="fp8" if "-fp8" in rule else "native",
        # V two of every four (or five of sixteen) channels: expanded, not scattered
        v_nm_group=4 if rule.endswith("-nm4v") else 16 if rule.endswith("-nm16v") else 0,
        # K four of every eight (or five of sixteen): expanded, scored by an MMA
        k_nm_group=8 if rule.startswith("nm8") else 16 if rule.startswith("nm16") else 0,
        k_strided=rule.startswith("nm8sk"),
        # each (row, head) in its own order: q gathered through it
        k_calibrated=rule.startswith(("nm8ck", "nm16ck")),
        **extra,
    )


def graph_time(fn, rep: int = REP) -> float:
    """Median of CUDA-graph replays of one call (no Python launch overhead; L2 still flushed by do_bench)."""
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_us(graph.replay, rep)


def _check_case(
    i: int, b, hkv, n_rep, t, w, d, dtype, k_keep, v_keep, word=False, v_nm_group=0
) -> list[dict]:
    torch.manual_seed(i)
    q = torch.randn(b, hkv * n_rep, d, device="cuda", dtype=dtype)
    stores = []
    for keep, group in ((k_keep, 0), (v_keep, v_nm_group)):
        rows = torch.randn(b, hkv, t, d, device="cuda", dtype=dtype)
        st = CompressedStore(b, hkv, d, dtype, "cuda", keep, word_quota=word, nm_group=group)
        if keep is None:  # variable layout: the published magnitude rule at s 0.6
            pack_into(st, rows, threshold_mask(rows.abs(), 0.6))
        elif group:
            pack_into(st, rows, nm_topk_mask(rows.abs(), keep, group))
        elif word:
            pack_into(st, rows, word_topk_mask(rows.abs(), keep))
        else:
            topk_pack_into(st, rows, keep)
            assert torch.equal(st.to_dense(), rows * topk_mask(rows.abs(), keep)), "prune+pack mismatch"
        stores.append(st)
    kw, vw = (torch.randn(b, hkv, w, d, device="cuda", dtype=dtype) for _ in "kv")
    inp = DecodeInputs(q, *stores, kw, vw)
    ref = sparse_decode_attention(q, *stores, kw, vw, inp.scale, backend="torch")
    default_decoder = default_launch(inp)["decoder"]
    staged_applies = default_decoder in ("staged", "scatter")
    variants = {"default": {}, **CONFIGS, "portable 1 split": dict(decoder="portable", num_splits=1)}
    variants["portable 3 splits"] = dict(decoder="portable", num_splits=3)
    variants["staged 5 splits"] = dict(decoder="staged", num_splits=5)
    if default_decoder == "scatter":
        variants["scatter 5 splits"] = dict(decoder="scatter", num_splits=5)
    out = []
    for name, opts in variants.items():
        if opts.get("decoder") == "staged" and not staged_applies:
            continue
        res = torch.full_like(q, math.nan)
        decode_call(inp, opts, out=res)()
        err = rel_err(res, ref)
        ok = err <= (1e-4 if dtype == torch.float32 else 1e-2) and not res.isnan().any().item()
        out.append(dict(case=i, launch=name, dtype=str(dtype), t=t, w=w, d=d, rel_err=err, ok=ok))
        if not ok:
            raise AssertionError(f"decode mismatch: {out[-1]}")
    return out


def _check_prune_pack(b, hkv, t, d, dtype, keep) -> None:
    """The default prune+pack (PTX on contiguous rows, per-thread PTX loads on strided rows, plain Triton on
    unaligned rows) against the exact top-k, on Gaussian and tie-heavy rows; pad slots zero."""
    gauss = torch.randn(b, hkv, t, d, device="cuda", dtype=dtype)
    ties = (torch.randint(-3, 4, (b, hkv, t, d), device="cuda") * 0.5).to(dtype)
    for data in (gauss, ties):
        strided = torch.zeros(b, hkv, 2 * t, d, device="cuda", dtype=dtype)[:, :, ::2]
        strided.copy_(data)
        unaligned = torch.zeros(b * hkv * t * d + 1, device="cuda", dtype=dtype)[1:].view(b, hkv, t, d)
        unaligned.copy_(data)
        want = data * topk_mask(data.abs(), keep)
        for rows in (data, strided, unaligned):
            st = CompressedStore(b, hkv, d, dtype, "cuda", keep)
            topk_pack_into(st, rows, keep)
            assert torch.equal(st.to_dense(), want), f"prune+pack mismatch (strides {rows.stride()})"
            assert (st.vals[:, :, :t, keep:] == 0).all(), "pad slots not zero"


def check_correctness() -> list[dict]:
    cases = [
        # b, hkv, n_rep, t, w, d, dtype, k_keep, v_keep (None = variable layout)
        (3, 2, 4, 1000, 32, 128, torch.float16, 38, 38),
        (2, 8, 4, 4133, 17, 128, torch.bfloat16, 64, 64),
        (2, 2, 4, 777, 5, 64, torch.float16, 19, None),
        (1, 2, 8, 300, 0, 128, torch.float16, None, 38),
        (2, 2, 1, 0, 9, 64, torch.bfloat16, 20, 20),
        (1, 2, 4, 513, 3, 128, torch.float32, 38, 38),
    ]
    out = []
    for i, case in enumerate(cases):
        out += _check_case(i, *case)
    for i, case in enumerate(c for c in cases if None not in c[-2:] and c[6] != torch.float32):
        out += _check_case(100 + i, *case, word=True)  # word-quota stores: the scatter decoder
        if case[-1] == case[5] // 2:  # V two of every four channels: the scatter decoder's expanded V
            out += _check_case(200 + i, *case, word=True, v_nm_group=4)
    for d, dtype, keep in ((128, torch.float16, 38), (128, torch.bfloat16, 64), (64, torch.float16, 19)):
        _check_prune_pack(2, 4, 333, d, dtype, keep)
    return out


def copy_roof() -> float:
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = time_us(lambda: dst.copy_(src))
    return 2 * n / (us * 1e-6) / 1e12  # TB/s, read + write


def fmt(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:.0f}" for k, v in d.items()) + "}"


def decode_row(
    s: float,
    b: int,
    t: int,
    roof_tbs: float,
    sweep: bool,
    baseline: dict,
    rule: str = "exact",
    shape: AttentionShape = SHAPE,
    dtype: torch.dtype = torch.float16,
) -> dict:
    keep = exact_keep(shape.head_dim, s)
    dense = dense_decode_call(shape, b, t + WINDOW, dtype)
    dense_us = time_us(dense)
    dense_graph = graph_time(dense)
    del dense
    inp = rule_inputs(rule, s, b, t, shape, dtype)
    default = decode_call(inp, {})
    us = time_us(default)  # first: the launch measures its occupancy, which the plan below then uses
    launch = default_launch(inp)
    sparse_graph = graph_time(default)
    sass = default_kernel_sass(inp)
    comp_bytes = inp.k_store.payload_nbytes + inp.v_store.payload_nbytes + 2 * inp.k_window.numel() * 2
    dense_bytes = 2 * b * shape.heads_kv * (t + WINDOW) * shape.head_dim * 2
    row = dict(
        sparsity=s,
        keep_rule=rule,
        keep=keep,
        batch=b,
        tokens=t,
        dense_sdpa_us=dense_us,
        sparse_us=us,
        speedup=dense_us / us,
        dense_graph_us=dense_graph,
        sparse_graph_us=sparse_graph,
        speedup_graph=dense_graph / sparse_graph,
        config="default",
        launch=launch,
        num_splits=launch["num_splits"],
        dense_bytes=dense_bytes,
        compressed_bytes=comp_bytes,
        dense_tbs=dense_bytes / dense_us / 1e6,
        sparse_tbs=comp_bytes / us / 1e6,
        roof_sparse_us=comp_bytes / (roof_tbs * 1e6),
        roof_dense_us=dense_bytes / (roof_tbs * 1e6),
        # the byte-ratio ideal: how much faster than dense reading only the compressed bytes would be
        byte_ideal=dense_bytes / comp_bytes,
        of_byte_ideal=(dense_graph / sparse_graph) / (dense_bytes / comp_bytes),
        instr_per_token_head=main_loop_instructions(sass) / launch["block_n"] if sass else None,
    )
    if sweep:
        row["per_config_us"] = {"default": us}
        for name, cfg in CONFIGS.items():
            try:
                row["per_config_us"][name] = time_us(decode_call(inp, cfg))
            except Exception as exc:  # a config the compiler rejects is recorded, not fatal
                print(f"config {name} failed: {exc}", flush=True)
        auto = launch["num_splits"]
        row["split_sweep_us"] = {f"auto={auto}": us}
        for label, n in (("x2", 2 * auto), ("half", max(1, auto // 2))):
            row["split_sweep_us"][f"{label}={n}"] = time_us(decode_call(inp, dict(launch, num_splits=n)))
    base = baseline.get((rule, s, b, t))
    if base:
        row["baseline_us"], row["vs_baseline"] = base, us / base
    print(
        f"{rule} s={s} B={b} T={t}: dense {dense_us:.0f} us ({row['dense_tbs']:.2f} TB/s), default {us:.0f} us "
        f"({row['sparse_tbs']:.2f} TB/s, roof {row['roof_sparse_us']:.0f} us) -> {row['speedup']:.2f}x, "
        f"{launch}; graphs: dense {dense_graph:.0f} us, sparse {sparse_graph:.0f} us -> {row['speedup_graph']:.2f}x"
        + (f"; baseline {base:.0f} us ({us / base:.3f}x)" if base else "")
        + (
            f"\n  configs {fmt(row['per_config_us'])}\n  splits {fmt(row['split_sweep_us'])}" if sweep else ""
        ),
        flush=True,
    )
    del inp
    torch.cuda.empty_cache()
    return row


def time_append(store: CompressedStore, append) -> float:
    """Time one append into ``store`` from empty (the same slots every call)."""

    def once():
        store.length = 0
        append()

    return time_us(once)


def compress_bench(b: int, t: int, sparsities: list[float], baseline: dict) -> list[dict]:
    out = []
    for s in sparsities:
        keep = exact_keep(SHAPE.head_dim, s)
        rows = torch.randn(b, SHAPE.heads_kv, t, SHAPE.head_dim, device="cuda", dtype=torch.float16)
        store = CompressedStore(b, SHAPE.heads_kv, SHAPE.head_dim, torch.float16, "cuda", keep, capacity=t)
        us = time_append(store, functools.partial(topk_pack_into, store, rows, keep))
        small_rows = rows[:, :, :1024]
        small = CompressedStore(b, SHAPE.heads_kv, SHAPE.head_dim, torch.float16, "cuda", keep, capacity=1024)
        mask = topk_mask(small_rows.abs(), keep)
        pack_us = time_append(small, functools.partial(pack_into, small, small_rows, mask))
        row = dict(
            sparsity=s,
            keep=keep,
            rows=b * SHAPE.heads_kv * t,
            topk_pack_us_per_tensor=us,
            launch="default",
            k_and_v_ms=2 * us / 1e3,
            read_write_tbs=(rows.numel() * 2 + store.payload_nbytes) / us / 1e6,
            pack_with_mask_us_per_1024_tokens=pack_us,
            bytes_per_token_head=store.payload_nbytes / (b * SHAPE.heads_kv * t),
            kv_fraction_of_dense=store.payload_nbytes / store.dense_nbytes,
        )
        base = baseline.get(s)
        if base:
            row["baseline_us"], row["vs_baseline"] = base, us / base
        out.append(row)
        print(
            f"compress s={s}: {us:.0f} us per tensor, K+V {2 * us / 1e3:.2f} ms; pack with a mask "
            f"{row['pack_with_mask_us_per_1024_tokens']:.0f} us per 1024 tokens"
            + (f"; baseline {base:.0f} us ({us / base:.3f}x)" if base else ""),
            flush=True,
        )
        del rows, store
    return out


def read_baseline(path: Path) -> tuple[dict, dict]:
    """Default-launch times of an earlier bench.json: decode by (keep rule, s, B, T), prune+pack by s. Files from
    round 5 list every launch per size; their default launch is the one named 'v6 n16' (prune+pack: 'p1'); files
    from before keep rules hold `exact` stores."""
    bench = json.loads(path.read_text())
    decode = {
        (r.get("keep_rule", "exact"), r["sparsity"], r["batch"], r["tokens"]): r.get("per_config_us", {}).get(
            "v6 n16", r["sparse_us"]
        )
        for r in bench["decode"]
    }
    compress = {
        r["sparsity"]: r.get("launch_sweep_us", {}).get("p1", r["topk_pack_us_per_tensor"])
        for r in bench["compress"]
    }
    return decode, compress


def to_markdown(meta: dict, roof: float, decode: list[dict], comp: list[dict], checks: list[dict]) -> str:
    lines = [
        "# Compressed-KV kernel benchmark",
        "",
        f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}. Command: `{meta['command']}`",
        "",
        f"Decode shapes: Llama-3-8B attention heads (32 query, 8 KV), head_dim {meta.get('head_dim', 128)}, "
        f"{meta.get('dtype', 'fp16')}.",
        "",
        f"Copy roof (D2D, read+write): **{roof:.2f} TB/s**. Correctness on GPU: {len(checks)} checks passed "
        f"(max rel err {max(c['rel_err'] for c in checks):.2e}).",
        "",
        "Times are do_bench medians with L2 flushed; 'graph' columns replay a captured CUDA graph of one call "
        "(no Python launch overhead). 'sparse' is the public op's default launch. TB/s counts K+V bytes read "
        "(compressed bytes for the sparse kernel); roof = compressed bytes / copy roof.",
        "",
        "'of ideal': the graph-replayed speed-up over the byte-ratio ideal (dense bytes / compressed bytes); "
        "'instr/th': SASS instructions of the decode kernel's main loop per token-head.",
        "",
        "| rule | s | B | T | dense SDPA µs | TB/s | sparse µs | TB/s (compressed) | roof µs | speedup | "
        "graph: dense µs | sparse µs | speedup | of ideal | instr/th | launch | best other launch µs | "
        "baseline µs | ×baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in decode:
        lc = r["launch"]
        others = {k: v for k, v in r.get("per_config_us", {}).items() if k != "default"}
        best = min(others, key=others.get) if others else None
        ipt = r.get("instr_per_token_head")
        lines.append(
            f"| {r.get('keep_rule', 'exact')} | "
            f"{r['sparsity']} | {r['batch']} | {r['tokens']} | {r['dense_sdpa_us']:.0f} | {r['dense_tbs']:.2f} | "
            f"{r['sparse_us']:.0f} | {r['sparse_tbs']:.2f} | {r['roof_sparse_us']:.0f} | {r['speedup']:.2f}× | "
            f"{r['dense_graph_us']:.0f} | {r['sparse_graph_us']:.0f} | {r['speedup_graph']:.2f}× | "
            f"{r['of_byte_ideal']:.2f} | {'–' if ipt is None else f'{ipt:.1f}'} | "
            f"{lc['decoder']} n{lc['block_n']}, {lc['num_splits']} splits | "
            + (f"{others[best]:.0f} ({best}) | " if best else "– | ")
            + (f"{r['baseline_us']:.0f} | {r['vs_baseline']:.3f} |" if "baseline_us" in r else "– | – |")
        )
    lines += [
        "",
        "| s | keep | rows | prune+pack µs / tensor | K+V ms | TB/s | pack-with-mask µs (1024 tok) | B/token-head | "
        "of dense | baseline µs | ×baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comp:
        lines.append(
            f"| {r['sparsity']} | {r['keep']} | {r['rows']} | {r['topk_pack_us_per_tensor']:.0f} | "
            f"{r['k_and_v_ms']:.2f} | {r['read_write_tbs']:.2f} | {r['pack_with_mask_us_per_1024_tokens']:.0f} | "
            f"{r['bytes_per_token_head']:.0f} | {r['kv_fraction_of_dense']:.3f} | "
            + (f"{r['baseline_us']:.0f} | {r['vs_baseline']:.3f} |" if "baseline_us" in r else "– | – |")
        )
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--tokens", default="4096,16384,32768")
    ap.add_argument("--sparsities", default="0.5,0.7")
    ap.add_argument("--quick", action="store_true", help="B 8 x 16K only, for a smoke run")
    ap.add_argument("--default-only", action="store_true", help="time the default launch only (no sweeps)")
    ap.add_argument(
        "--baseline", type=Path, help="an earlier bench.json: its sizes, and its times side by side"
    )
    ap.add_argument(
        "--keep-rules",
        default="exact,word",
        help="stores to decode: exact (top-k per token: the staged decoder), word (word quotas: scatter); "
        "suffix -fp8 for fp8 values (word-fp8: scatter, exact-fp8: portable); word-nm4v: K word, V two of every "
        "four channels (expanded by the scatter decoder; s 0.5 only, other sparsities skipped), word-fp8-nm4v the "
        "same with fp8 values; nm8sk-nm4v: K four of every eight strided channels, V two of every four (both "
        "expanded; nm8k-nm4v: K groups consecutive, nm8ck-nm4v: K groups calibrated per head, q gathered through "
        "each head's order, the same kernel), nm8sk-fp8-nm4v and nm8ck-fp8-nm4v the same with fp8 values; "
        "nm16k-fp8-nm16v / nm16ck-fp8-nm16v: K and V five of every sixteen channels as fp8 codes, K groups "
        "consecutive / calibrated (both expanded; s 0.6875 only)",
    )
    ap.add_argument(
        "--dtype", choices=("fp16", "bf16"), default="fp16", help="queries, windows, dense K/V, values"
    )
    ap.add_argument(
        "--head-dim",
        type=int,
        default=SHAPE.head_dim,
        help="decode at Llama-3-8B's heads with another head_dim",
    )
    ap.add_argument("--skip-compress", action="store_true", help="decode only")
    ap.add_argument("--check-only", action="store_true", help="GPU correctness checks only")
    ap.add_argument("--compress-only", action="store_true", help="correctness + copy roof + compression only")
    args = ap.parse_args()
    if not torch.cuda.is_available():  # before --out is created: nothing is written on a CPU
        ap.exit(2, "bench_kernels.py needs a CUDA GPU: its kernels are timed against dense SDPA there.\n")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    meta = dict(
        device=torch.cuda.get_device_name(),
        sms=torch.cuda.get_device_properties(0).multi_processor_count,
        torch=torch.__version__,
        triton=triton.__version__,
        command="python3 " + " ".join(sys.argv),
        dtype=args.dtype,
        head_dim=args.head_dim,
    )
    shape = dataclasses.replace(SHAPE, head_dim=args.head_dim)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    print(meta, flush=True)
    checks = check_correctness()
    print(f"correctness: {len(checks)} ok, max rel err {max(c['rel_err'] for c in checks):.2e}", flush=True)
    if args.check_only:
        return
    roof = copy_roof()
    print(f"copy roof {roof:.2f} TB/s", flush=True)
    sparsities = [float(x) for x in args.sparsities.split(",")]
    sizes = [(s, b, t) for s in sparsities for b in _ints(args.batches) for t in _ints(args.tokens)]
    base_decode, base_compress = read_baseline(args.baseline) if args.baseline else ({}, {})
    if args.baseline:
        sizes = sorted({key[1:] for key in base_decode})
        sparsities = sorted({s for s, _, _ in sizes})
    elif args.quick:
        sizes = [(s, 8, 16384) for s in sparsities]
    comp = [] if args.skip_compress else compress_bench(32, 16384, sparsities, base_compress)
    decode, repeat = [], []
    if not args.compress_only:
        sweep = not args.default_only
        rules = args.keep_rules.split(",")
        bad = sorted(set(rules) - set(KEEP_RULES))
        if bad:
            raise SystemExit(f"--keep-rules: unknown {bad}; known: {', '.join(KEEP_RULES)}")
        decode = [
            decode_row(s, b, t, roof, sweep and rule == "exact", base_decode, rule, shape, dtype)
            for s, b, t in sizes
            for rule in rules
            if _fits(rule, s, shape.head_dim)
        ]
        # timed again: run-to-run spread
        repeat = [
            decode_row(_rule_sparsity(rule), 8, 16384, roof, False, base_decode, rule, shape, dtype)
            for rule in rules
        ]
    result = dict(meta=meta, copy_roof_tbs=roof, checks=checks, decode=decode, repeat=repeat, compress=comp)
    result["wall_s"] = time.time() - t0
    (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    md = to_markdown(meta, roof, decode, comp, checks)
    (args.out / "bench.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
