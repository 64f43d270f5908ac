"""GPU check + benchmark of the compressed-KV kernels (imports only torch/triton/numpy and mustafar.formats/kernels).

1. correctness on the GPU: Triton decode vs the torch reference (fp16/bf16, D 64/128, fixed and variable layouts,
   GQA, empty window / empty store), Triton prune+pack vs the torch top-k (exact);
2. the copy roof (device-to-device copy, bytes read + written);
3. decode: dense SDPA (enable_gqa) vs our sparse kernel, B in {1, 8, 32} x T in {4K, 16K, 32K} x s in {0.5, 0.7},
   Llama-3-8B attention shapes (32 q heads, 8 KV heads, D 128, fp16), dense window of 32 tokens; a small sweep of
   launch configs picks the best per size;
4. compression throughput (K and V of B 32 x 16K x 8 heads) and bytes per token.

Usage: python scripts/bench_kernels.py --out DIR [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mustafar.formats import CompressedStore, keep_count, reference_keep_mask, topk_keep_mask  # noqa: E402
from mustafar.kernels import compress, sparse_decode_attention  # noqa: E402
from mustafar.kernels.compress import pack_triton, topk_pack_triton  # noqa: E402
from mustafar.kernels.decode import planned_splits  # noqa: E402

HQ, HKV, D, WINDOW = 32, 8, 128, 32
CONFIGS = {  # name -> launch options; v2 = the round-1 decoder, for comparison (round-4 variants: NOTES.md)
    "v2 n64 w4": dict(version=2, block_n=64, num_warps=4, prefetch=0),
    "v3 n64 w4 p2": dict(version=3, block_n=64, num_warps=4, prefetch=2),
    "v3 n32 w1 p2": dict(version=3, block_n=32, num_warps=1, prefetch=2),
    "v4 n64 w4": dict(version=4, block_n=64, num_warps=4),
    "v5 n64 w4": dict(version=5, block_n=64, num_warps=4),
    "v5 n32 w1": dict(version=5, block_n=32, num_warps=1),
    "v6 n32": dict(version=6, block_n=32),
    "v6 n16": dict(version=6, block_n=16),
}
COMPRESS_LAUNCHES = [(8, 2), (16, 4), (32, 4), (8, 1), (16, 1)]  # (block_r, num_warps), plain-Triton kernel
# one-row-per-thread prune+pack kernels (32 rows per warp); launch keys "p{warps}" (PTX, default: coalesced loads
# transposed in shared memory, 1 partial sum per search pass), "n{warps}" (PTX, per-thread row loads), "m{warps}"
# (PTX, 4 partial sums), "q{warps}" (PTX, per-thread loads + second read of the row for the pack), "g{warps}" (Gluon).
# bench_run6_compress.json predates the last default change: its "p" = 4 partial sums, its "a" = today's "p".
GLUON_WARPS = (1, 2, 4)


@contextlib.contextmanager
def ptx_variant(reload=False, accs=1, coalesced=True):
    """The PTX prune+pack kernel with (reload) or without a second read of the row for the pack, ``accs`` partial
    sums per search pass, coalesced (transposed in shared memory) or per-thread row loads (defaults = the library's)."""
    old = compress._PTX_RELOAD, compress._PTX_ACCS, compress._PTX_COALESCED
    compress._PTX_RELOAD, compress._PTX_ACCS, compress._PTX_COALESCED = reload, accs, coalesced
    try:
        yield
    finally:
        compress._PTX_RELOAD, compress._PTX_ACCS, compress._PTX_COALESCED = old


def bench(fn, rep=60):
    return do_bench(fn, warmup=15, rep=rep, return_mode="median") * 1e3  # microseconds


def sdpa_gqa(q4, k, v):
    return F.scaled_dot_product_attention(q4, k, v, enable_gqa=True)


def time_dense(q4, k, v, rep):
    return bench(lambda: F.scaled_dot_product_attention(q4, k, v, enable_gqa=True), rep)


def time_sparse(q, ks, vs, kw, vw, cfg, rep):
    return bench(lambda: sparse_decode_attention(q, ks, vs, kw, vw, D**-0.5, **cfg), rep)


def round3_splits(b, t, block_n):
    """The round-3 split heuristic (about 4 waves at 2 programs per SM, >= 4 tiles per split), for comparison."""
    want = max(1, math.ceil(4 * torch.cuda.get_device_properties(0).multi_processor_count / (b * HKV)))
    return max(1, min(want, triton.cdiv(t, 4 * block_n)))


def time_topk(store, rows, keep, rep, **launch):
    def once():
        store.length = 0
        topk_pack_triton(store, rows, keep, **launch)

    return bench(once, rep)


def graph_time(fn, rep):
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
    return bench(graph.replay, rep)


def time_pack(store, rows, mask, counts, rep):
    def once():
        store.length = 0
        pack_triton(store, rows, mask, counts)

    return bench(once, rep)


def fmt(d):
    return "{" + ", ".join(f"{k}: {v:.0f}" for k, v in d.items()) + "}"


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def build_stores(b, t, keep, dtype=torch.float16, seed=0, chunk=4096):
    """K and V stores filled with random rows by the Triton prune+pack kernel, in chunks (bounded memory)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    stores = []
    for _ in range(2):
        st = CompressedStore(b, HKV, D, dtype, "cuda", keep, capacity=t)
        for a in range(0, t, chunk):
            n = min(chunk, t - a)
            rows = torch.randn(b, HKV, n, D, device="cuda", dtype=dtype, generator=g)
            st.append_topk(rows, keep)
        stores.append(st)
    return stores


def check_correctness():
    out = []
    cases = [
        # b, hkv, n_rep, t, w, d, dtype, k_keep, v_keep(None = variable, reference rule s=0.6)
        (3, 2, 4, 1000, 32, 128, torch.float16, 38, 38),
        (2, 8, 4, 4133, 17, 128, torch.bfloat16, 64, 64),
        (2, 2, 4, 777, 5, 64, torch.float16, 19, None),
        (1, 2, 8, 300, 0, 128, torch.float16, None, 38),
        (2, 2, 1, 0, 9, 64, torch.bfloat16, 20, 20),
        (1, 2, 4, 513, 3, 128, torch.float32, 38, 38),
    ]
    for i, (b, hkv, n_rep, t, w, d, dtype, kk, vk) in enumerate(cases):
        torch.manual_seed(i)
        q = torch.randn(b, hkv * n_rep, d, device="cuda", dtype=dtype)
        stores = []
        for keep in (kk, vk):
            rows = torch.randn(b, hkv, t, d, device="cuda", dtype=dtype)
            st = CompressedStore(b, hkv, d, dtype, "cuda", keep)
            if keep is None:
                st.append(rows, reference_keep_mask(rows.abs(), 0.6))
            else:
                st.append_topk(rows, keep)
                assert torch.equal(st.to_dense(), rows * topk_keep_mask(rows, keep)), "prune+pack mismatch"
            stores.append(st)
        if dtype != torch.float32 and kk is not None and t:
            # every row-per-thread prune+pack kernel and launch width (the default is one of them) against the exact
            # torch top-k, on Gaussian rows and on rows of a few repeated values (ties at the threshold)
            rows = torch.randn(b, hkv, t, d, device="cuda", dtype=dtype)
            ties = (torch.randint(-3, 4, (b, hkv, t, d), device="cuda") * 0.5).to(dtype)
            for data in (rows, ties):
                want = data * topk_keep_mask(data, kk)
                variants = [(True, {}, w) for w in GLUON_WARPS] + [(False, {}, w) for w in GLUON_WARPS]
                variants += [(True, dict(reload=True, coalesced=False), 1), (True, dict(accs=4), 1)]
                variants += [(True, dict(coalesced=False), 1)]
                for ptx, var, warps in variants:
                    st = CompressedStore(b, hkv, d, dtype, "cuda", kk)
                    with ptx_variant(**var):
                        topk_pack_triton(st, data, kk, gl_warps=warps, ptx=ptx)
                    assert torch.equal(st.to_dense(), want), (
                        f"row-per-thread prune+pack mismatch (ptx {ptx} {var}, warps {warps}, case {i})"
                    )
                    assert (st.vals[:, :, :t, kk:] == 0).all(), "pad slots not zero"
        kw = torch.randn(b, hkv, w, d, device="cuda", dtype=dtype)
        vw = torch.randn(b, hkv, w, d, device="cuda", dtype=dtype)
        ref = sparse_decode_attention(q, *stores, kw, vw, d**-0.5, backend="torch")
        variants = [dict(), dict(version=2, group=32), *(dict(version=3, group=g) for g in (8, 16, 32))]
        variants += [dict(maxnreg=128), dict(maxnreg=128, prefetch_l1=True, num_splits=3), dict(num_splits=1)]
        variants += [
            dict(version=4),
            dict(version=4, num_splits=3),
            dict(version=5, block_n=64, num_warps=4),
            dict(version=5, num_splits=3),
            dict(version=5, block_n=16, num_splits=5),
            dict(version=5, block_n=32, num_warps=2),
            dict(version=6),
            dict(version=6, block_n=16, num_splits=3),
        ]
        for opts in variants:
            res = torch.full_like(q, math.nan)
            o = sparse_decode_attention(q, *stores, kw, vw, d**-0.5, backend="triton", out=res, **opts)
            err = rel_err(o, ref)
            tol = 1e-4 if dtype == torch.float32 else 1e-2
            ok = err <= tol and not o.isnan().any().item()
            out.append(dict(case=i, options=opts, dtype=str(dtype), t=t, w=w, d=d, rel_err=err, ok=ok))
            if not ok:
                raise AssertionError(f"decode mismatch: {out[-1]}")
    return out


def copy_roof():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = bench(lambda: dst.copy_(src))
    return 2 * n / (us * 1e-6) / 1e12  # TB/s, read + write


def decode_bench(batches, tokens, sparsities, roof_tbs, rep):
    rows = []
    for s in sparsities:
        keep = keep_count(D, s)
        for b in batches:
            for t in tokens:
                torch.manual_seed(0)
                q = torch.randn(b, HQ, D, device="cuda", dtype=torch.float16)
                k_dense = torch.randn(b, HKV, t + WINDOW, D, device="cuda", dtype=torch.float16)
                v_dense = torch.randn_like(k_dense)
                q4 = q.unsqueeze(2)
                dense_us = time_dense(q4, k_dense, v_dense, rep)
                dense_bytes = 2 * b * HKV * (t + WINDOW) * D * 2
                ks, vs = build_stores(b, t, keep)
                kw = torch.randn(b, HKV, WINDOW, D, device="cuda", dtype=torch.float16)
                vw = torch.randn_like(kw)
                comp_bytes = ks.payload_nbytes + vs.payload_nbytes + 2 * kw.numel() * 2
                per_config = {}
                for name, cfg in CONFIGS.items():
                    try:
                        per_config[name] = time_sparse(q, ks, vs, kw, vw, cfg, rep)
                    except Exception as exc:  # a config the compiler rejects is recorded, not fatal
                        print(f"config {name} failed: {exc}", flush=True)
                best_name = min((n for n in per_config if not n.startswith("v2")), key=per_config.get)
                cfg = dict(CONFIGS[best_name])
                auto = planned_splits(q, ks, vs, **cfg)
                # the chosen config at other split counts: the wave model's choice against coarser/finer splits
                # and the round-3 heuristic (which also ran the window as an extra program per head)
                split_sweep = {f"auto={auto}": per_config[best_name]}
                for label, n in (
                    ("round3", round3_splits(b, t, cfg.get("block_n", 64))),
                    ("x2", 2 * auto),
                    ("half", max(1, auto // 2)),
                ):
                    split_sweep[f"{label}={n}"] = time_sparse(q, ks, vs, kw, vw, dict(cfg, num_splits=n), rep)
                us = per_config[best_name]
                v2_us = per_config.get("v2 n64 w4", math.nan)
                dense_graph = graph_time(functools.partial(sdpa_gqa, q4, k_dense, v_dense), rep)
                sparse_graph = graph_time(
                    functools.partial(
                        sparse_decode_attention,
                        q,
                        ks,
                        vs,
                        kw,
                        vw,
                        D**-0.5,
                        **cfg,
                    ),
                    rep,
                )
                row = dict(
                    sparsity=s,
                    keep=keep,
                    batch=b,
                    tokens=t,
                    dense_sdpa_us=dense_us,
                    sparse_us=us,
                    speedup=dense_us / us,
                    dense_graph_us=dense_graph,
                    sparse_graph_us=sparse_graph,
                    speedup_graph=dense_graph / sparse_graph,
                    config=best_name,
                    num_splits=auto,
                    per_config_us=per_config,
                    split_sweep_us=split_sweep,
                    v2_us=v2_us,
                    speedup_v2=dense_us / v2_us,
                    dense_bytes=dense_bytes,
                    compressed_bytes=comp_bytes,
                    dense_tbs=dense_bytes / dense_us / 1e6,
                    sparse_tbs=comp_bytes / us / 1e6,
                    roof_sparse_us=comp_bytes / (roof_tbs * 1e6),
                    roof_dense_us=dense_bytes / (roof_tbs * 1e6),
                )
                rows.append(row)
                print(
                    f"s={s} B={b} T={t}: dense {dense_us:.0f} us ({row['dense_tbs']:.2f} TB/s), sparse {us:.0f} us "
                    f"({row['sparse_tbs']:.2f} TB/s, roof {row['roof_sparse_us']:.0f} us) -> {row['speedup']:.2f}x "
                    f"cfg {best_name} splits {auto}; graphs: dense {dense_graph:.0f} us, sparse {sparse_graph:.0f} us "
                    f"-> {row['speedup_graph']:.2f}x\n  configs {fmt(per_config)}\n  splits {fmt(split_sweep)}",
                    flush=True,
                )
                del ks, vs, k_dense, v_dense
                torch.cuda.empty_cache()
    return rows


def compress_bench(b, t, rep):
    out = []
    for s in (0.5, 0.7):
        keep = keep_count(D, s)
        rows = torch.randn(b, HKV, t, D, device="cuda", dtype=torch.float16)
        store = CompressedStore(b, HKV, D, torch.float16, "cuda", keep, capacity=t)
        sweep = {}
        for swar in (False, True):
            for block_r, warps in COMPRESS_LAUNCHES:
                sweep[f"r{block_r}w{warps}{'s' if swar else ''}"] = time_topk(
                    store, rows, keep, rep, gluon=False, block_r=block_r, num_warps=warps, swar=swar
                )
        for warps in GLUON_WARPS:
            sweep[f"p{warps}"] = time_topk(store, rows, keep, rep, gl_warps=warps)
            with ptx_variant(coalesced=False):
                sweep[f"n{warps}"] = time_topk(store, rows, keep, rep, gl_warps=warps)
            with ptx_variant(accs=4):
                sweep[f"m{warps}"] = time_topk(store, rows, keep, rep, gl_warps=warps)
            with ptx_variant(reload=True, coalesced=False):
                sweep[f"q{warps}"] = time_topk(store, rows, keep, rep, gl_warps=warps)
            sweep[f"g{warps}"] = time_topk(store, rows, keep, rep, gl_warps=warps, ptx=False)
        best_cfg = min(sweep, key=sweep.get)
        us = sweep[best_cfg]
        old_us = min(u for k, u in sweep.items() if k.startswith("r") and not k.endswith("s"))
        triton_us = min(u for k, u in sweep.items() if k.startswith("r"))
        mask = topk_keep_mask(rows[:, :, :1024], keep)
        counts = mask.sum(-1)
        small = CompressedStore(b, HKV, D, torch.float16, "cuda", keep, capacity=1024)
        pack_us = time_pack(small, rows[:, :, :1024], mask, counts, rep)
        in_bytes = rows.numel() * 2
        out.append(
            dict(
                sparsity=s,
                keep=keep,
                rows=b * HKV * t,
                topk_pack_us_per_tensor=us,
                no_swar_best_us=old_us,
                plain_triton_best_us=triton_us,
                launch=best_cfg,
                launch_sweep_us=sweep,
                k_and_v_ms=2 * us / 1e3,
                read_write_tbs=(in_bytes + store.payload_nbytes) / us / 1e6,
                pack_with_mask_us_per_1024_tokens=pack_us,
                bytes_per_token_head=store.payload_nbytes / (b * HKV * t),
                kv_fraction_of_dense=store.payload_nbytes / store.dense_nbytes,
            )
        )
        print(
            f"compress s={s}: {us:.0f} us per tensor ({best_cfg}), K+V {2 * us / 1e3:.2f} ms; plain Triton "
            f"{triton_us:.0f} us, without SWAR {old_us:.0f} us; sweep {sweep}",
            flush=True,
        )
        del rows, store
    return out


def to_markdown(meta, roof, decode_rows, comp_rows, checks):
    lines = [
        "# Compressed-KV kernel benchmark",
        "",
        f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}. Command: `{meta['command']}`",
        "",
        f"Copy roof (D2D, read+write): **{roof:.2f} TB/s**. Correctness on GPU: {len(checks)} checks passed "
        f"(max rel err {max(c['rel_err'] for c in checks):.2e}).",
        "",
        "Times are do_bench medians with L2 flushed; 'graph' columns replay a captured CUDA graph of one call "
        "(no Python launch overhead). TB/s counts K+V bytes read (compressed bytes for the sparse kernel); roof = "
        "compressed bytes / copy roof.",
        "",
        "| s | B | T | dense SDPA µs | TB/s | sparse µs | TB/s (compressed) | roof µs | speedup | v2 µs | v2 speedup | "
        "graph: dense µs | sparse µs | speedup | config |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in decode_rows:
        c = r["config"]
        lines.append(
            f"| {r['sparsity']} | {r['batch']} | {r['tokens']} | {r['dense_sdpa_us']:.0f} | {r['dense_tbs']:.2f} | "
            f"{r['sparse_us']:.0f} | {r['sparse_tbs']:.2f} | {r['roof_sparse_us']:.0f} | {r['speedup']:.2f}× | "
            f"{r['v2_us']:.0f} | {r['speedup_v2']:.2f}× | "
            f"{r['dense_graph_us']:.0f} | {r['sparse_graph_us']:.0f} | {r['speedup_graph']:.2f}× | "
            f"{c}, {r['num_splits']} splits |"
        )
    lines += [
        "",
        "| s | keep | rows | prune+pack µs / tensor | K+V ms | TB/s | launch (s = SWAR, g = Gluon, p/n/m/q = PTX) | no-SWAR best µs | "
        "pack-with-mask µs (1024 tok) | B/token-head | of dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comp_rows:
        lines.append(
            f"| {r['sparsity']} | {r['keep']} | {r['rows']} | {r['topk_pack_us_per_tensor']:.0f} | "
            f"{r['k_and_v_ms']:.2f} | {r['read_write_tbs']:.2f} | {r['launch']} | {r['no_swar_best_us']:.0f} | "
            f"{r['pack_with_mask_us_per_1024_tokens']:.0f} | "
            f"{r['bytes_per_token_head']:.0f} | {r['kv_fraction_of_dense']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="one size per sparsity, for a smoke run")
    ap.add_argument("--skip-compress", action="store_true", help="decode only")
    ap.add_argument("--check-only", action="store_true", help="GPU correctness checks only")
    ap.add_argument("--compress-only", action="store_true", help="correctness + copy roof + compression only")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    meta = dict(
        device=torch.cuda.get_device_name(),
        sms=torch.cuda.get_device_properties(0).multi_processor_count,
        torch=torch.__version__,
        triton=triton.__version__,
        command="python " + " ".join(sys.argv),
    )
    print(meta, flush=True)
    checks = check_correctness()
    print(f"correctness: {len(checks)} ok, max rel err {max(c['rel_err'] for c in checks):.2e}", flush=True)
    if args.check_only:
        return
    roof = copy_roof()
    print(f"copy roof {roof:.2f} TB/s", flush=True)
    batches, tokens = ([8], [16384]) if args.quick else ([1, 8, 32], [4096, 16384, 32768])
    if args.skip_compress:
        batches = [b for b in batches if b > 1]
    comp = compress_bench(32, 16384, rep=60) if not args.skip_compress else []
    if args.compress_only:
        decode, repeat = [], []
    else:
        decode = decode_bench(batches, tokens, (0.5, 0.7), roof, rep=60)
        repeat = decode_bench([8], [16384], (0.7,), roof, rep=60)  # same point timed again: run-to-run spread
    result = dict(meta=meta, copy_roof_tbs=roof, checks=checks, decode=decode, repeat=repeat, compress=comp)
    result["wall_s"] = time.time() - t0
    (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    md = to_markdown(meta, roof, decode, comp, checks)
    (args.out / "bench.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
