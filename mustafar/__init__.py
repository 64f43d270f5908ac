"""mustafar: unstructured KV-cache pruning for LLM inference.

    import mustafar

    with mustafar.prune(model, k_sparsity=0.7, v_sparsity=0.7) as cache:
        out = model.generate(input_ids, past_key_values=cache, max_new_tokens=64)
    print(cache.stats().k_sparsity)

The library needs torch and transformers only (no Hydra, W&B or the evaluation harness); Triton is imported when
compressed mode first launches a kernel.
"""

from mustafar.attention import attach
from mustafar.cache import CacheStats, MustafarCache
from mustafar.config import ConfigError, KVConfig
from mustafar.kernels import sparse_decode_attention
from mustafar.prune import prune

__version__ = "0.1.0"

__all__ = [
    "CacheStats",
    "ConfigError",
    "KVConfig",
    "MustafarCache",
    "attach",
    "prune",
    "sparse_decode_attention",
]
