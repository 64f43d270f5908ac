"""Sweep-throughput benchmark: GPU-minutes of one LongBench-shaped job, today's path vs batched static graphs.

The job (`mustafar.bench.longbench_shape`): the 16 English tasks' sample counts, seeded prompt lengths from each
task's published average length (truncated at 7,500 tokens), each task's `max_new_tokens`; random weights at
Llama-3-8B shapes, so every sample generates its whole budget. Two paths per policy (dense, K0.7V0.7 mask mode):

- `batch-1 eager`: today's path, one sample at a time through the dynamic `MustafarCache`, eager decode steps.
- `batched graphs`: samples sorted by length in batches of `--batch`, a static cache per batch
  (`mustafar.static_cache`), the decode step captured once per batch and replayed (`mustafar.graphs`).

Measuring all 3,750 samples would take hours for the eager path, so each path is measured at a few prompt lengths
(prefill time, decode step time after a warm-up, per-batch graph setup) and the job is extrapolated from those
points by piecewise-linear interpolation in the length (every batch priced at its longest prompt). The output
states the grid, the assumptions of the length model and the measured points next to the totals.

Needs only torch, triton and transformers (the GPU machine has no hydra/pandas):
    python scripts/bench_sweep.py --out results/sweep            # ~3 min on an H200
    python scripts/bench_sweep.py --quick --out results/sweep    # two lengths, fewer steps
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mustafar.attention import attach  # noqa: E402
from mustafar.bench.longbench_shape import EN_TASKS, LengthModel, PathCost, job_seconds, prompt_lengths  # noqa: E402
from mustafar.bench.random_model import build_model  # noqa: E402
from mustafar.bench.shapes import ARCHS  # noqa: E402
from mustafar.cache import MustafarCache  # noqa: E402
from mustafar.config import KVConfig  # noqa: E402
from mustafar.graphs import WARMUP_STEPS, DecodeRunner  # noqa: E402
from mustafar.static_cache import static_cache  # noqa: E402

POLICIES = {"dense": KVConfig(), "K0.7V0.7": KVConfig(k_sparsity=0.7, v_sparsity=0.7, mode="mask")}
MAXLEN_FILE = ROOT / "eval" / "longbench" / "maxlen.json"


def _decode_ms(runner: DecodeRunner, tok: torch.Tensor, position: int, steps: int) -> float:
    """Wall ms per step of a greedy loop (no host wait inside the loop)."""
    batch = tok.shape[0]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        tok = runner.step(tok, torch.full((batch, 1), position + i, device=tok.device)).argmax(
            -1, keepdim=True
        )
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000 / steps


def _prefill(model, cache, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    torch.cuda.synchronize()
    return time.perf_counter() - t0, tok


@torch.inference_mode()
def measure(model, policy: KVConfig, batched: bool, batch: int, length: int, steps: int) -> dict[str, float]:
    """Prefill seconds, decode ms per step and per-batch setup ms of one path at one prompt length."""
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device=model.device)
    if batched:
        cache = static_cache(model, policy, length, WARMUP_STEPS + 1 + steps + 1)
    else:
        cache = MustafarCache(policy, num_layers=model.config.num_hidden_layers)
    with attach(model, cache):
        prefill_s, tok = _prefill(model, cache, ids)
        runner = DecodeRunner(model, cache, graphs=batched)
        first = _decode_ms(runner, tok, length, WARMUP_STEPS + 1) * (WARMUP_STEPS + 1)  # warm-up (+ capture)
        step_ms = _decode_ms(runner, tok, length + WARMUP_STEPS + 1, steps)
    del cache
    torch.cuda.empty_cache()
    setup = max(0.0, first - (WARMUP_STEPS + 1) * step_ms) if batched else 0.0
    return {
        "prefill_s": round(prefill_s, 4),
        "step_ms": round(step_ms, 3),
        "setup_ms": round(setup, 1),
        "captured": runner.captured,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama3_8b", choices=sorted(ARCHS))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--batch", type=int, default=32, help="samples per batch on the batched path")
    ap.add_argument(
        "--lengths", default="1024,4096,7500", help="prompt lengths measured (interpolated between)"
    )
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="lengths 2048,7500 and 8 steps")
    ap.add_argument("--out", default="results/sweep")
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.steps = "2048,7500", 8
    if not torch.cuda.is_available():
        print("bench_sweep needs a CUDA GPU: GPU-minutes are only measured on a GPU.", file=sys.stderr)
        return 2
    policies = args.policies.split(",")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"unknown policy {unknown}; choose from {list(POLICIES)}", file=sys.stderr)
        return 2
    grid = sorted({int(x) for x in args.lengths.split(",")})
    lengths_model = LengthModel()
    lengths = {t: prompt_lengths(t, n, args.seed, lengths_model) for t, (n, _) in EN_TASKS.items()}
    max_new = {t: n for t, n in json.loads(MAXLEN_FILE.read_text()).items() if t in EN_TASKS}
    model = build_model(args.model, torch.bfloat16, "cuda")
    for batched in (False, True):  # first-call warm-up of both paths (kernels, cuBLAS, Triton compilation)
        measure(model, POLICIES[policies[0]], batched, 2 if batched else 1, 256, 2)
    report = {
        "device": torch.cuda.get_device_name(),
        "host": platform.node(),
        "torch": torch.__version__,
        "model": args.model,
        "dtype": "bfloat16",
        "command": " ".join(sys.argv),
        "batch": args.batch,
        "grid": grid,
        "steps": args.steps,
        "length_model": asdict(lengths_model),
        "samples": sum(len(v) for v in lengths.values()),
        "prompt_tokens": sum(sum(v) for v in lengths.values()),
        "new_tokens": sum(len(lengths[t]) * max_new[t] for t in lengths),
        "measured": {},
        "jobs": {},
    }
    for name in policies:
        for batched, label, batch in ((False, "batch-1 eager", 1), (True, "batched graphs", args.batch)):
            points = {n: measure(model, POLICIES[name], batched, batch, n, args.steps) for n in grid}
            report["measured"][f"{name} / {label}"] = points
            print(f"{name} / {label}: {json.dumps(points)}", flush=True)
            cost = PathCost(
                batch=batch,
                prefill_s={n: p["prefill_s"] for n, p in points.items()},
                step_ms={n: p["step_ms"] for n, p in points.items()},
                setup_ms=max(p["setup_ms"] for p in points.values()),
            )
            per_task = job_seconds(cost, lengths, max_new)
            report["jobs"][f"{name} / {label}"] = {
                "policy": name,
                "path": label,
                "batch": batch,
                "gpu_minutes": round(sum(per_task.values()) / 60, 2),
                "per_task_minutes": {t: round(s / 60, 3) for t, s in per_task.items()},
            }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    text = render(report)
    (out / "bench_sweep.md").write_text(text + "\n")
    print(text)
    return 0


def render(report: dict) -> str:
    lm = report["length_model"]
    lines = [
        f"LongBench-shaped job ({report['samples']} samples, {report['prompt_tokens']:,} prompt tokens, "
        f"{report['new_tokens']:,} new tokens), {report['model']} random weights, {report['dtype']}, "
        f"{report['device']}",
        "",
        f"Extrapolated from prompt lengths {report['grid']} ({report['steps']} timed decode steps each); prompt "
        f"lengths log-normal around the LongBench averages x {lm['tokens_per_word']} tokens/word "
        f"({lm['tokens_per_code_word']} for code), sigma {lm['sigma']}, truncated at {lm['max_prompt']}.",
        "",
        "| policy | path | batch | GPU-minutes per job | speed-up vs batch-1 eager |",
        "|---|---|---|---|---|",
    ]
    for job in report["jobs"].values():
        base = report["jobs"].get(f"{job['policy']} / batch-1 eager")
        speedup = base["gpu_minutes"] / job["gpu_minutes"] if base and job["gpu_minutes"] else None
        lines.append(
            f"| {job['policy']} | {job['path']} | {job['batch']} | {job['gpu_minutes']:.1f} | "
            f"{'—' if speedup is None else f'{speedup:.1f}x'} |"
        )
    lines += [
        "",
        "| policy / path | prompt | prefill s | decode ms/step | setup ms | captured |",
        "|---|---|---|---|---|---|",
    ]
    for key, points in report["measured"].items():
        for n, p in points.items():
            lines.append(
                f"| {key} | {n} | {p['prefill_s']:.3f} | {p['step_ms']:.2f} | {p['setup_ms']:.0f} | {p['captured']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
