"""Kernels over the compressed KV format: prune+pack into a store, and fused split-K sparse decode attention.

Import-light: Triton is imported only when a Triton backend is actually used.

**Static stores and CUDA graphs.** A decode step that a CUDA graph can capture needs stores whose buffers never
move and whose token count never reaches the host::

    ks = CompressedStore(B, H_kv, D, dtype, "cuda", keep=k, capacity=N, static=True)  # fixed layout, allocated once
    vs = CompressedStore(B, H_kv, D, dtype, "cuda", keep=k, capacity=N, static=True)
    topk_pack_into(ks, k_prompt, k)          # prefill: eager, any number of tokens
    ...
    # per decode step, capturable: prune the token leaving the window to its top-k and append it at the
    # device-side count, which then advances on the device ...
    topk_pack_into(ks, k_leaving, k)         # k_leaving [B, H_kv, 1, D]
    topk_pack_into(vs, v_leaving, k)
    # ... then attend over the stores up to their device-side length plus the dense window
    sparse_decode_attention(q, ks, vs, k_window, v_window, scale, out=out)

* ``ks.length_tensor``: int32 [B] on the device, one count per batch row (the decoders decode each row to its
  own count; appends write each row at its own count). ``ks.length`` reads it on the host (synchronises; raises if
  the rows differ or an append overflowed), ``ks.length = n`` / ``ks.reset()`` set it (device ops).
* The decode's launch plan (split count, tokens per split) is fixed for the capacity: one launch, one captured
  graph, for every length up to ``N``. Call it once eagerly before capturing (the first launch compiles and measures
  the occupancy the plan uses). Keep the K and V counts equal (the kernels read the smaller) and the attended set
  non-empty (an empty static store with an empty window gives NaN: not checkable without a synchronisation).
* Appends past the capacity are dropped on the device (never written out of bounds); the next host read of
  ``length`` raises. Size ``N`` = prompt + new tokens.
* Capturable: the top-k pack on the Triton backend (CUDA tensors; ``backend="auto"``) and the decode. Not
  capturable (host-driven, synchronising): ``pack_into`` with a given mask, the PyTorch references
  (``backend="torch"``), the variable layout (``keep=None``; static stores need the fixed layout).

**Eager launch cost.** Launch configurations, split plans, occupancy, the split partials (per shape and CUDA
stream) and the compiled kernels are cached, and cached kernels are relaunched through Triton's C launcher without
the JIT dispatcher: per call the decode validates shapes (no device reads), allocates only the output (none with
``out=``) and issues two launches. A call whose inputs match the previous call's on the same stores (shapes,
strides, dtypes, buffers, scale, stream) replays that call's launches instead, both in one C call with only the
addresses (and a dynamic store's length) rewritten (:mod:`mustafar.kernels.launch_seq`). ``scripts/bench_launch.py``
measures it against graph replay and dense SDPA.
"""

from mustafar.kernels.dispatch import pack_into, resolve_backend, sparse_decode_attention, topk_pack_into
from mustafar.kernels.support import HEAD_DIMS

__all__ = ["HEAD_DIMS", "pack_into", "resolve_backend", "sparse_decode_attention", "topk_pack_into"]
