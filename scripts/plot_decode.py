"""Plots of the end-to-end decode benchmark, and KV memory vs context length measured from allocated buffers.

    python scripts/plot_decode.py --results results/decode

Reads bench_decode.json (from scripts/bench_decode.py on a GPU) and writes throughput.png. The memory curve is
measured here, on any device: one Llama-3-8B-shaped layer (8 KV heads, D=128, fp16) per context length is
prefilled into each cache format through the real cache code, its allocated tensor bytes are read back and
scaled to 32 layers (bytes do not depend on values or on the device). Writes kv_memory.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mustafar.bench.shapes import attention_shape  # noqa: E402
from mustafar.cache import CompressedLayer  # noqa: E402
from mustafar.config import KVConfig  # noqa: E402
from mustafar.pruning import Observation  # noqa: E402

COLORS = {"dense": "0.55", "dense-prealloc": "k", "K0.5V0.5": "tab:blue", "K0.7V0.7": "tab:red"}
POLICIES = {
    "K0.5V0.5": KVConfig(k_sparsity=0.5, v_sparsity=0.5, mode="compressed"),
    "K0.7V0.7": KVConfig(k_sparsity=0.7, v_sparsity=0.7, mode="compressed"),
}
SHAPE = attention_shape("llama3_8b")
LAYERS, KV_HEADS, HEAD_DIM = SHAPE.layers, SHAPE.heads_kv, SHAPE.head_dim


def layer_bytes(policy: KVConfig | None, context: int) -> int:
    """Allocated bytes of one prefilled layer (batch 1) of a format."""
    torch.manual_seed(0)
    k = torch.randn(1, KV_HEADS, context, HEAD_DIM, dtype=torch.float16)
    v = torch.randn_like(k)
    if policy is None:
        return 2 * k.numel() * k.element_size()
    layer = CompressedLayer(policy)
    layer.bound = True  # a lone layer driven by hand, as mustafar.attach would drive it
    layer.update(k, v)
    layer.after_attention(Observation(q_len=context))
    stores = [t for s in layer.stores.values() for t in (s.bits, s.vals)]
    return sum(t.untyped_storage().nbytes() for t in [layer.keys, layer.values, *stores])


def kv_memory(contexts: list[int]) -> dict:
    rows = []
    for ctx in contexts:
        dense = layer_bytes(None, ctx) * LAYERS
        row = {"context": ctx, "dense_gib": dense / 2**30}
        for name, policy in POLICIES.items():
            row[f"{name}_gib"] = layer_bytes(policy, ctx) * LAYERS / 2**30
            row[f"{name}_fraction"] = row[f"{name}_gib"] / row["dense_gib"]
        rows.append(row)
    return {
        "shape": f"Llama-3-8B KV: {LAYERS} layers x {KV_HEADS} KV heads x D={HEAD_DIM}, fp16, batch 1",
        "how": "allocated tensor bytes of the real cache after prefill (scripts/plot_decode.py)",
        "rows": rows,
    }


def plot_memory(mem: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ctx = [r["context"] for r in mem["rows"]]
    ax.plot(ctx, [r["dense_gib"] for r in mem["rows"]], "o-", color="k", label="dense fp16")
    for name in POLICIES:
        frac = mem["rows"][-1][f"{name}_fraction"]
        ax.plot(
            ctx,
            [r[f"{name}_gib"] for r in mem["rows"]],
            "o-",
            color=COLORS[name],
            label=f"compressed {name} ({frac:.3f} of dense)",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("KV cache per sequence (GiB)")
    ax.set_title("KV memory, Llama-3-8B shapes (allocated bytes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)


def plot_throughput(report: dict, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    points = report["points"] + [m["point"] for m in report["max_batch"].values() if m["point"]]
    for ax, key, title in (
        (axes[0], "gpu_tokens_per_s", "GPU kernel time per step"),
        (axes[1], "tokens_per_s", "wall clock (CPU-launch-bound host)"),
    ):
        for fmt, color in COLORS.items():
            pts = sorted((p["batch"], p[key]) for p in points if p["fmt"] == fmt and not p["oom"])
            if not pts:
                continue
            ax.plot(*zip(*pts), "o-", color=color, label=fmt)
            top = report["max_batch"].get(fmt, {}).get("batch")
            if top:
                ax.plot(top + 1, 0, "x", color=color, markersize=10, mew=2)
                ax.annotate(
                    f"OOM >{top}",
                    (top + 1, 0),
                    textcoords="offset points",
                    xytext=(-10, 8),
                    fontsize=7,
                    color=color,
                )
        ax.set_xlabel(f"batch size (sequences of {report['context']} tokens)")
        ax.set_ylabel("decode tokens / s")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['model']} (random weights, fp16) on {report['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)


def plot_static(report: dict, out: Path) -> None:
    """Static caches: eager wall clock, CUDA-graph wall clock and GPU time per decode step, tokens/s by batch."""
    tops = [m["point"] for m in report["max_batch"].values() if m.get("point")]
    points = [p for p in report["points"] + tops if p.get("graph_tokens_per_s") and not p["oom"]]
    fmts = list(dict.fromkeys(p["fmt"] for p in points))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for fmt, color in zip(fmts, colors):
        pts = sorted(
            (p["batch"], p["tokens_per_s"], p["graph_tokens_per_s"]) for p in points if p["fmt"] == fmt
        )
        batches, eager, graph = zip(*pts)
        ax.plot(batches, graph, "o-", color=color, label=f"{fmt}: CUDA graph (wall)")
        ax.plot(batches, eager, "x--", color=color, alpha=0.6, label=f"{fmt}: eager (wall)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(
        f"batch size (sequences of {report['context']} tokens; last point = largest batch that fits)"
    )
    ax.set_ylabel("decode tokens / s (wall clock)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(
        f"{report['model']} (random weights, fp16), static caches on {report['device']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)


def merged_reports(reports: list[dict]) -> dict:
    """One report holding every run's points and largest batches (their shared model and context; every
    device the runs name, so a plot of runs from two machines does not credit one)."""
    if any((r["model"], r["context"]) != (reports[0]["model"], reports[0]["context"]) for r in reports):
        raise ValueError("bench_decode runs to plot together must share the model and the context")
    seen: set[str] = set()
    for r in reports:  # one format's points from two runs would draw as one series
        fmts = {p["fmt"] for p in r["points"]}
        if fmts & seen:
            raise ValueError(f"format(s) {sorted(fmts & seen)} appear in more than one bench_decode run")
        seen |= fmts
    devices = " + ".join(dict.fromkeys(r["device"] for r in reports))
    merged = dict(reports[0], device=devices, points=[p for r in reports for p in r["points"]], max_batch={})
    for r in reports:
        merged["max_batch"].update(r.get("max_batch", {}))
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results/decode")
    ap.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    ap.add_argument(
        "--bench",
        nargs="+",
        type=Path,
        help="bench_decode JSON files to plot together (runs of one model and context, e.g. one format per "
        "session); default: RESULTS/bench_decode.json",
    )
    args = ap.parse_args()
    missing = [str(b) for b in args.bench or [] if not b.exists()]
    if missing:
        raise SystemExit(f"--bench: no such file(s): {', '.join(missing)}")
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    mem = kv_memory([int(c) for c in args.contexts.split(",")])
    (out / "kv_memory.json").write_text(json.dumps(mem, indent=2) + "\n")
    plot_memory(mem, out / "kv_memory.png")
    for r in mem["rows"]:
        print(
            f"context {r['context']:>6}: dense {r['dense_gib']:.3f} GiB, "
            + ", ".join(f"{n} {r[f'{n}_gib']:.3f} GiB ({r[f'{n}_fraction']:.3f})" for n in POLICIES)
        )
    benches = args.bench or [b for b in [out / "bench_decode.json"] if b.exists()]
    if benches:
        report = merged_reports([json.loads(b.read_text()) for b in benches])
        if any(p.get("graph_tokens_per_s") for p in report["points"]):
            plot_static(report, out / "static_throughput.png")
        if any(p["fmt"] in COLORS for p in report["points"]):
            plot_throughput(report, out / "throughput.png")


if __name__ == "__main__":
    main()
