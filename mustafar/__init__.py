"""mustafar: unstructured KV-cache pruning for LLM inference.

    import mustafar

    with mustafar.prune(model, k_sparsity=0.7, v_sparsity=0.7) as cache:
        out = model.generate(input_ids, past_key_values=cache, max_new_tokens=64)
    print(cache.stats().k_sparsity)

The library needs torch and transformers only (no Hydra, W&B or the evaluation harness). The names below load on
first use, so `import mustafar.formats` (or a kernel benchmark) does not pull in transformers or the kernels.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_HOME = {
    "CacheStats": "mustafar.cache",
    "ConfigError": "mustafar.config",
    "KVConfig": "mustafar.config",
    "MustafarCache": "mustafar.cache",
    "UnattachedCacheError": "mustafar.cache",
    "attach": "mustafar.attention",
    "generate": "mustafar.generation",
    "prune": "mustafar.api",
    "sparse_decode_attention": "mustafar.kernels",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'mustafar' has no attribute {name!r}")
    value = getattr(import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
