"""Greedy generation of benchmark samples through a pruning cache, one fresh cache per sample."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from eval.common import Sample, prediction_record
from mustafar.attention import attach, new_cache
from mustafar.config import KVConfig
from mustafar.models import LoadedModel


@dataclass
class GenerationStats:
    """Measured over every sample of a job."""

    k_kept: int = 0
    k_judged: int = 0
    v_kept: int = 0
    v_judged: int = 0
    kv_bytes: int = 0
    kv_payload_bytes: int = 0
    dense_bytes: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    pruned_tokens: int = 0  # tokens whose pattern was final at the end, summed over samples
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def measured(self, mode: str) -> dict[str, Any]:
        return {
            "k_sparsity_measured": round(1 - self.k_kept / self.k_judged, 4) if self.k_judged else 0.0,
            "v_sparsity_measured": round(1 - self.v_kept / self.v_judged, 4) if self.v_judged else 0.0,
            # memory is only a fact in compressed mode: mask mode stores a dense cache
            "kv_bytes": self.kv_bytes if mode == "compressed" else None,
            "kv_payload_bytes": self.kv_payload_bytes if mode == "compressed" else None,
            "dense_kv_bytes": self.dense_bytes,
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


@torch.inference_mode()
def generate_one(
    loaded: LoadedModel, policy: KVConfig, sample: Sample, stats: GenerationStats
) -> dict[str, Any]:
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    ids = torch.tensor([sample.input_ids], device=device)
    cache = new_cache(model, policy)
    start = time.perf_counter()
    with attach(model, cache):
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            past_key_values=cache,
            max_new_tokens=sample.max_new_tokens,
            min_new_tokens=sample.min_new_tokens or None,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            num_beams=1,
            eos_token_id=eos_ids(loaded, sample),
            pad_token_id=tok.pad_token_id,
        )
    stats.seconds += time.perf_counter() - start
    new = out[0, ids.shape[1] :]
    c = cache.stats()
    stats.k_kept += c.k_kept
    stats.k_judged += c.k_judged
    stats.v_kept += c.v_kept
    stats.v_judged += c.v_judged
    stats.kv_bytes += c.kv_bytes or 0
    stats.kv_payload_bytes += c.kv_payload_bytes or 0
    stats.dense_bytes += c.dense_bytes
    stats.prompt_tokens += ids.shape[1]
    stats.new_tokens += int(new.shape[0])
    return prediction_record(sample, tok.decode(new, skip_special_tokens=True), int(new.shape[0]))


def generate_task(
    loaded: LoadedModel, policy: KVConfig, samples: list[Sample], stats: GenerationStats, desc: str
) -> list[dict[str, Any]]:
    return [
        generate_one(loaded, policy, s, stats) for s in tqdm(samples, desc=desc, unit="sample", leave=False)
    ]
