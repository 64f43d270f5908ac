"""Greedy generation of benchmark samples through a pruning cache, in batches of one task's samples.

Samples are sorted by prompt length within a task (little left padding), generated `batch_size` at a time by
`mustafar.generate` (each row pruned and counted exactly as if it ran alone), and returned in sample order.
On CUDA `generate` picks the static cache and CUDA-graph decode by itself where the policy allows it, with
results equal to the dynamic path's, so the job needs no key for it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from eval.common import Sample, prediction_record
from eval.registry import check_batch_size
from mustafar.cache import CacheStats, add_stats
from mustafar.config import KVConfig
from mustafar.generation import GenerationOutput, generate
from mustafar.models import LoadedModel

# SmolLM2-135M, RULER-1024 niah_single_1, 4 samples, 2 shared CPU cores: 11.2 CPU-s per sample at batch 1,
# 15.4 at 2, 11.6-12.7 at 4 (identical records): batching does not pay on a few cores, so auto stays at 1 there.
CPU_BATCH = 1
CUDA_BATCH = 16


def auto_batch_size(device: str) -> int:
    """`benchmark.batch_size=auto`: batching pays on a GPU; on a few CPU cores it does not (CPU_BATCH)."""
    return CUDA_BATCH if device == "cuda" else CPU_BATCH


def _empty_cache_stats() -> CacheStats:
    return CacheStats(0, 0, 0, 0, kv_bytes=0, kv_payload_bytes=0, dense_bytes=0)


def _sparsity(kept: int, judged: int) -> float:
    return round(1 - kept / judged, 4) if judged else 0.0


@dataclass
class GenerationStats:
    """Measured over the samples of a task or job: their cache statistics summed, and token counts."""

    cache: CacheStats = field(default_factory=_empty_cache_stats)
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.cache, dict):  # read back from a task's .stats.json
            self.cache = CacheStats(**self.cache)

    def add(self, other: GenerationStats) -> None:
        self.cache = add_stats(self.cache, other.cache)
        self.prompt_tokens += other.prompt_tokens
        self.new_tokens += other.new_tokens
        self.seconds += other.seconds

    def add_sample(self, out: GenerationOutput) -> None:
        if out.stats is not None:
            self.cache = add_stats(self.cache, out.stats)
        self.prompt_tokens += out.prompt_tokens
        self.new_tokens += len(out.tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def measured(self, mode: str) -> dict[str, Any]:
        c = self.cache
        compressed = (
            mode == "compressed"
        )  # memory is only a fact in compressed mode: mask mode stores a dense cache
        return {
            "k_sparsity_measured": _sparsity(c.k_kept, c.k_judged),
            "v_sparsity_measured": _sparsity(c.v_kept, c.v_judged),
            # allocated bytes belong to a batch's stores, so they are summed only for one-sample batches
            "kv_bytes": c.kv_bytes if compressed else None,
            "kv_payload_bytes": c.kv_payload_bytes if compressed else None,
            "dense_kv_bytes": c.dense_bytes,
            "kv_evicted_bytes": c.evicted_bytes,
            "k_judged": c.k_judged,
            "v_judged": c.v_judged,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "generation_seconds": round(self.seconds, 2),
        }


def eos_ids(loaded: LoadedModel, sample: Sample) -> list[int]:
    ids = loaded.model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if loaded.tokenizer.eos_token_id is not None:
        ids.append(loaded.tokenizer.eos_token_id)
    return sorted(set(ids) | set(sample.stop_token_ids))


def _record(loaded: LoadedModel, sample: Sample, out: GenerationOutput) -> dict[str, Any]:
    text = loaded.tokenizer.decode(out.tokens, skip_special_tokens=True)
    record = prediction_record(sample, text, len(out.tokens))
    stats = out.stats
    record["k_sparsity_measured"] = _sparsity(stats.k_kept, stats.k_judged) if stats else 0.0
    record["v_sparsity_measured"] = _sparsity(stats.v_kept, stats.v_judged) if stats else 0.0
    return record


def generate_task(
    loaded: LoadedModel,
    policy: KVConfig,
    samples: list[Sample],
    stats: GenerationStats,
    desc: str,
    batch_size: int | str = "auto",
) -> list[dict[str, Any]]:
    """Prediction records of one task's samples, in sample order; adds every sample's statistics to `stats`."""
    check_batch_size(batch_size)
    device = next(loaded.model.parameters()).device
    if batch_size == "auto":
        batch_size = auto_batch_size(device.type)
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else 0  # pads are masked out: any valid id will do
    records: list[dict[str, Any] | None] = [None] * len(samples)
    with tqdm(total=len(samples), desc=desc, unit="sample", leave=False) as bar:
        for lo in range(0, len(order), batch_size):
            chunk = [samples[i] for i in order[lo : lo + batch_size]]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            outs = generate(
                loaded.model,
                policy,
                [s.input_ids for s in chunk],
                max_new_tokens=[s.max_new_tokens for s in chunk],
                stop_ids=[eos_ids(loaded, s) for s in chunk],
                min_new_tokens=[s.min_new_tokens for s in chunk],
                pad_id=pad_id,
            )
            stats.seconds += time.perf_counter() - start
            for i, sample, out in zip(order[lo : lo + batch_size], chunk, outs):
                stats.add_sample(out)
                records[i] = _record(loaded, sample, out)
            bar.update(len(chunk))
    return records
