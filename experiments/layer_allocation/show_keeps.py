"""What `kv.allocation=error` / `error_head` decide on the embedded model: per-layer keep counts of K and V for the
first RULER samples of a task (prefill only; the keeps are fixed at prefill).

    python experiments/layer_allocation/show_keeps.py --task niah_single_1 --n 3 --sparsity 0.7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eval import registry  # noqa: E402
from mustafar import models  # noqa: E402
from mustafar.attention import attach, new_cache  # noqa: E402
from mustafar.config import KVConfig  # noqa: E402
from mustafar.generation import left_pad, prefill  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="niah_single_1")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--length", type=int, default=1024)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((root / "conf/model/smollm2.yaml").read_text())
    loaded = models.load(models.ModelConfig(**cfg), device="cpu")
    bench_cfg = {"name": "ruler", "length": args.length, "n": args.n, "tasks": [args.task]}
    bench = registry.build(bench_cfg, loaded, seed=42)
    s = args.sparsity
    for allocation in ("error", "error_head"):
        policy = KVConfig(k_sparsity=s, v_sparsity=s, allocation=allocation)
        for i, sample in enumerate(bench.samples(args.task)):
            cache = new_cache(loaded.model, policy)
            batch = left_pad([sample.input_ids], 0, "cpu")
            with attach(loaded.model, cache), torch.inference_mode():
                prefill(loaded.model, cache, batch)
            for side, keeps in cache.layers[0].allocator.keeps.items():
                per_layer = keeps[0].float().mean(-1)  # [L]: the mean over the layer's heads
                print(
                    f"{allocation:10s} sample {i} {side.upper()}: budget {int(keeps[0].float().mean())}, "
                    f"range {int(keeps.min())}-{int(keeps.max())}, per layer "
                    + " ".join(f"{k:.0f}" for k in per_layer.tolist())
                )


if __name__ == "__main__":
    main()
