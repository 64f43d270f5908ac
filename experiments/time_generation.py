"""Per-sample generation cost of a sweep job, for the cost estimates in experiments/*/README.md.

Times what a job does per sample at batch size 1 (a fresh cache, prefill, greedy decode through the pruning
cache) on a random-weight model of a real architecture (speed does not depend on the weight values), with the
generation length forced so that every policy decodes the same number of tokens.

    python experiments/time_generation.py --arch llama3_8b --prompt 6000 --new 64 --policies dense,k70v70
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mustafar.attention import attach, new_cache  # noqa: E402
from mustafar.config import KVConfig  # noqa: E402

ARCHS = {
    "llama3_8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192,
    ),
    "smollm2_135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
    ),
}  # fmt: skip
POLICIES = {
    "dense": KVConfig(),
    "k50v50": KVConfig(k_sparsity=0.5, v_sparsity=0.5),
    "k70v70": KVConfig(k_sparsity=0.7, v_sparsity=0.7),
    "think_k70": KVConfig(k_sparsity=0.7, k_scorer="think"),
    "v70_channel_oa": KVConfig(v_sparsity=0.7, v_direction="channel", v_scorer="output_aware"),
}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def generate_seconds(model, policy: KVConfig, prompt: int, new: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, prompt), device=model.device)
    cache = new_cache(model, policy)
    sync(model.device.type)
    start = time.perf_counter()
    with attach(model, cache):
        model.generate(
            ids, attention_mask=torch.ones_like(ids), past_key_values=cache, max_new_tokens=new,
            min_new_tokens=new, do_sample=False, num_beams=1, pad_token_id=0,
        )  # fmt: skip
    sync(model.device.type)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="llama3_8b", choices=sorted(ARCHS))
    ap.add_argument("--prompt", type=int, default=6000)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--policies", default="dense,k70v70")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**ARCHS[args.arch]), dtype=dtype).eval()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{args.arch} random weights, {dtype}, {name}, prompt {args.prompt}, {args.new} new tokens")
    print("| policy | prefill+1 token s | decode ms/token | sample s |\n|---|---|---|---|")
    for key in args.policies.split(","):
        policy = POLICIES[key]
        generate_seconds(model, policy, 256, 4)  # warm-up (kernels, allocator)
        first = statistics.median(
            generate_seconds(model, policy, args.prompt, 1) for _ in range(args.repeats)
        )
        full = statistics.median(
            generate_seconds(model, policy, args.prompt, args.new) for _ in range(args.repeats)
        )
        per_token = (full - first) / (args.new - 1) * 1000
        print(f"| {key} | {first:.2f} | {per_token:.1f} | {full:.2f} |", flush=True)


if __name__ == "__main__":
    main()
