"""Kernels over the compressed KV format: prune+pack into a store, and fused split-K sparse decode attention.

Import-light: Triton is imported only when a Triton backend is actually used.
"""

from mustafar.kernels.dispatch import pack_into, resolve_backend, sparse_decode_attention, topk_pack_into
from mustafar.kernels.support import HEAD_DIMS

__all__ = ["HEAD_DIMS", "pack_into", "resolve_backend", "sparse_decode_attention", "topk_pack_into"]
