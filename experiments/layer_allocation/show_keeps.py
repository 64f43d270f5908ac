"""What `kv.allocation=error` / `error_head` decide on the embedded model: per-layer keep counts of K and V for the
first RULER samples of a task (prefill only; the keeps are fixed at prefill), and the compressed bytes per
token-head those keeps take in fp16 in the layout compressed mode gives them (fixed per layer where a layer's heads
agree, else variable; docs/formats.md §2), against uniform pruning's fixed layout.

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
from mustafar.formats.bitmap import fixed_token_nbytes, variable_token_nbytes  # noqa: E402
from mustafar.generation import left_pad, prefill  # noqa: E402
from mustafar.pruning import exact_keep  # noqa: E402

FP16 = 2


def token_head_bytes(keeps: torch.Tensor, head_dim: int) -> float:
    """Mean fp16 bytes per token-head of one side's keeps [L, H] in the layout each layer's store uses."""
    total = 0.0
    for layer in keeps.tolist():
        if len(set(layer)) == 1:
            total += fixed_token_nbytes(head_dim, layer[0], FP16) * len(layer)
        else:
            total += sum(variable_token_nbytes(head_dim, k, FP16) for k in layer)
    return total / keeps.numel()


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
    d = loaded.head_dim
    uniform = fixed_token_nbytes(d, exact_keep(d, s), FP16)
    print(
        f"uniform: keep {exact_keep(d, s)} of {d}, {uniform} B per token-head per side (fp16, fixed layout)"
    )
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
                    + f"; {token_head_bytes(keeps[0], d):.1f} B per token-head"
                )


if __name__ == "__main__":
    main()
