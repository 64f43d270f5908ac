"""Compressed KV-cache layouts (per-token bitmap + packed values) and their byte accounting."""

from mustafar.formats.bitmap import (
    CompressedStore,
    fixed_token_nbytes,
    keep_count,
    pack_bitmap,
    padded_keep,
    reference_keep_mask,
    topk_keep_mask,
    unpack_bitmap,
    variable_token_nbytes,
)

__all__ = [
    "CompressedStore",
    "fixed_token_nbytes",
    "keep_count",
    "pack_bitmap",
    "padded_keep",
    "reference_keep_mask",
    "topk_keep_mask",
    "unpack_bitmap",
    "variable_token_nbytes",
]
