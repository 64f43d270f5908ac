"""Compressed KV-cache layouts (per-token bitmap + packed values), their byte accounting and the store (data only:
the kernels in :mod:`mustafar.kernels` prune and pack into it)."""

from mustafar.formats.bitmap import (
    SUPPORTED_DTYPES,
    CompressedStore,
    fixed_token_nbytes,
    pack_bitmap,
    padded_keep,
    stored_channels,
    unpack_bitmap,
    variable_token_nbytes,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "CompressedStore",
    "fixed_token_nbytes",
    "pack_bitmap",
    "padded_keep",
    "stored_channels",
    "unpack_bitmap",
    "variable_token_nbytes",
]
