"""KV-cache size relative to dense, per job: measured where a compressed-mode job measured it, else computed.

Measured: `kv_payload_bytes / dense_kv_bytes` of a `kv.mode=compressed` job (the stored tokens' bytes, dense window
included). Payload is each sample's own and so the same at any batch size, where allocated `kv_bytes` is recorded only
for one-sample batches (a GPU job, batch 16, has none); rows written before payload was recorded use `kv_bytes`.
Computed ("closed form"): the bytes the framework's layouts need for the *pruned* tokens at the job's measured
sparsity, in fp16 (the GPU dtype), window excluded, i.e. the long-context limit:
- per-token rules: the fixed per-token bitmap layout (D-bit bitmap + keep values padded to 16 bytes); under
  `kv.allocation=error_head` (keeps that differ between a layer's heads) the variable layout instead, and under
  `error` the fixed layout at the mean keep (each layer's own slot padding is not in the row: within ~2 %);
- per-channel rules (a variable count per token): the variable layout (bitmap + int32 offset + values);
- ThinK: the kept channels stored dense (channel indices per head are negligible);
- `kv.value_dtype=fp8`: the fp8 fixed layout (bitmap + one byte per kept value padded to 8 + a 4-byte scale), on
  both sides (a side with sparsity 0 is stored too, with every value kept).
Token eviction (`kv.evict`) scales either figure by the cached share of the tokens, dense_kv_bytes /
(dense_kv_bytes + kv_evicted_bytes): the evicted tokens are part of the dense reference, not of the cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mustafar.formats.bitmap import fixed_token_nbytes, variable_token_nbytes

FP16 = 2
MEASURED, COMPUTED = "measured", "closed-form"


def side_fraction(
    nominal: float,
    measured: float,
    direction: str,
    scorer: str,
    head_dim: int,
    value_dtype: str = "native",
    allocation: str = "uniform",
) -> float:
    """Bytes of one pruned token of K (or V) over its dense fp16 bytes."""
    dense = head_dim * FP16
    if value_dtype == "fp8":  # per-token rules only (the config refuses others)
        keep = round((1.0 - measured) * head_dim) if nominal else head_dim
        return fixed_token_nbytes(head_dim, keep, FP16, "fp8") / dense
    if nominal == 0:
        return 1.0
    if scorer == "think":
        return 1.0 - measured
    if direction == "token" and allocation != "error_head":
        return fixed_token_nbytes(head_dim, round((1.0 - measured) * head_dim), FP16) / dense
    return (variable_token_nbytes(head_dim, 0, FP16) + (1.0 - measured) * dense) / dense


def kv_fraction(row: Mapping[str, Any]) -> tuple[float, str]:
    """(KV bytes / dense KV bytes, MEASURED or COMPUTED) for one job's row."""
    stored, dense = row.get("kv_payload_bytes"), row.get("dense_kv_bytes")
    if not _number(stored):  # a row from before kv_payload_bytes
        stored = row.get("kv_bytes")
    evicted = row.get("kv_evicted_bytes")
    evicted = evicted if _number(evicted) else 0
    if row.get("mode") == "compressed" and _number(stored) and _number(dense) and dense > 0:
        return stored / (dense + evicted), MEASURED
    cached = dense / (dense + evicted) if _number(dense) and dense > 0 else 1.0
    d = int(row["head_dim"])
    value_dtype, allocation = row.get("value_dtype", "native"), row.get("allocation", "uniform")
    k, v = (
        side_fraction(
            row[f"{side}_sparsity"],
            row[f"{side}_sparsity_measured"],
            row[f"{side}_direction"],
            row[f"{side}_scorer"],
            d,
            value_dtype,
            allocation,
        )
        for side in "kv"
    )
    return cached * (k + v) / 2, COMPUTED


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and x == x  # NaN (a missing value in a DataFrame) is not a number
