"""Synthetic inputs and timing for the kernel benchmarks (GPU): K/V stores filled by the real prune+pack kernel
at a model's attention shape, decode queries and windows, dense K/V for the SDPA baseline, and the decode call
under test (the public op's default launch, or the private launch with explicit knobs)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from triton.testing import do_bench

from mustafar.bench.shapes import AttentionShape
from mustafar.formats import CompressedStore
from mustafar.kernels import pack_into, sparse_decode_attention, topk_pack_into
from mustafar.kernels.decode import _DEFAULT_LAUNCH, _launch, _planned_splits
from mustafar.kernels.dispatch import decoder_for
from mustafar.pruning.keep import balanced_groups, word_topk_mask

WINDOW = 32  # dense window tokens next to the compressed ones
LAUNCH_OPTIONS = ("decoder", "block_n", "num_warps", "num_splits")  # the knobs of the private launch


@dataclass
class DecodeInputs:
    q: Tensor
    k_store: CompressedStore
    v_store: CompressedStore
    k_window: Tensor
    v_window: Tensor

    @property
    def scale(self) -> float:
        return self.q.shape[-1] ** -0.5


def build_stores(
    shape: AttentionShape,
    batch: int,
    tokens: int,
    keep: int,
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
    chunk: int = 4096,
    word_quota: bool = False,
    value_dtype: str = "native",
    v_nm_group: int = 0,
    k_nm_group: int = 0,
    k_strided: bool = False,
    k_calibrated: bool = False,
) -> tuple[CompressedStore, CompressedStore]:
    """K and V stores of N(0, 1) rows pruned and packed by the default prune+pack (``word_quota``: the word
    rule's stores, which the scatter decoder reads; ``value_dtype="fp8"``: e4m3 codes; ``v_nm_group`` /
    ``k_nm_group``: V / K kept per group of that many channels, consecutive or, ``k_strided``, strided, or,
    ``k_calibrated``, in each (row, head)'s order dealt from the first chunk's mean magnitudes, as a prefill
    calibrates ``nm8c``), in chunks (bounded memory)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    stores = []
    for group, strided, calibrated in ((k_nm_group, k_strided, k_calibrated), (v_nm_group, False, False)):
        st = CompressedStore(
            batch,
            shape.heads_kv,
            shape.head_dim,
            dtype,
            "cuda",
            keep,
            capacity=tokens,
            word_quota=word_quota,
            value_dtype=value_dtype,
            nm_group=group,
            nm_strided=strided,
        )
        for a in range(0, tokens, chunk):
            n = min(chunk, tokens - a)
            rows = torch.randn(
                batch, shape.heads_kv, n, shape.head_dim, device="cuda", dtype=dtype, generator=g
            )
            if calibrated and st.head_order is None:
                st.set_head_order(balanced_groups(rows.abs().float().mean(2), group))
            if group:
                pack_into(st, rows, st.kept_mask(rows.abs(), keep))
            elif word_quota:
                pack_into(st, rows, word_topk_mask(rows.abs(), keep))
            else:
                topk_pack_into(st, rows, keep)
        stores.append(st)
    return stores[0], stores[1]


def decode_inputs(
    shape: AttentionShape,
    batch: int,
    tokens: int,
    keep: int,
    dtype: torch.dtype = torch.float16,
    window: int = WINDOW,
    seed: int = 0,
    word_quota: bool = False,
    value_dtype: str = "native",
    v_nm_group: int = 0,
    k_nm_group: int = 0,
    k_strided: bool = False,
    k_calibrated: bool = False,
) -> DecodeInputs:
    """One decode step's inputs: q [B, H_q, D], stores of ``tokens`` compressed tokens, dense windows."""
    torch.manual_seed(seed)
    q = torch.randn(batch, shape.heads_q, shape.head_dim, device="cuda", dtype=dtype)
    ks, vs = build_stores(
        shape,
        batch,
        tokens,
        keep,
        dtype,
        seed,
        word_quota=word_quota,
        value_dtype=value_dtype,
        v_nm_group=v_nm_group,
        k_nm_group=k_nm_group,
        k_strided=k_strided,
        k_calibrated=k_calibrated,
    )
    kw, vw = (
        torch.randn(batch, shape.heads_kv, window, shape.head_dim, device="cuda", dtype=dtype) for _ in "kv"
    )
    return DecodeInputs(q, ks, vs, kw, vw)


def dense_decode_call(
    shape: AttentionShape, batch: int, tokens: int, dtype: torch.dtype = torch.float16
) -> Callable[[], Tensor]:
    """The dense baseline as a zero-argument call: SDPA (enable_gqa) of one query over distinct random K and V of
    ``tokens`` tokens (one tensor for both would let V hit in L2)."""
    q = torch.randn(batch, shape.heads_q, 1, shape.head_dim, device="cuda", dtype=dtype)
    k, v = (
        torch.randn(batch, shape.heads_kv, tokens, shape.head_dim, device="cuda", dtype=dtype) for _ in "kv"
    )
    return functools.partial(F.scaled_dot_product_attention, q, k, v, enable_gqa=True)


def decode_call(inp: DecodeInputs, options: dict, out: Tensor | None = None) -> Callable[[], Tensor]:
    """The decode under test as a zero-argument call writing into ``out`` (if given): the public op (its default
    launch) for ``{}``, else the private launch with ``options`` (keys :data:`LAUNCH_OPTIONS`; the decoder
    defaults to the dispatcher's)."""
    unknown = set(options) - set(LAUNCH_OPTIONS)
    if unknown:
        raise ValueError(f"unknown launch options {sorted(unknown)}; choose from {LAUNCH_OPTIONS}")
    args = (inp.q, inp.k_store, inp.v_store, inp.k_window, inp.v_window, inp.scale)
    if not options:
        return lambda: sparse_decode_attention(*args, out=out)
    opts = dict(options)
    decoder = opts.pop("decoder", None) or decoder_for(inp.q, inp.k_store, inp.v_store)
    return lambda: _launch(*args, decoder, out=out, **opts)


def time_us(fn: Callable[[], object], rep: int = 60) -> float:
    """do_bench median in microseconds (L2 flushed between calls)."""
    return do_bench(fn, warmup=15, rep=rep, return_mode="median") * 1e3


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def default_launch(inp: DecodeInputs) -> dict:
    """What the public op launches for these inputs (decoder, tile size, split count), as private-launch options.

    The split count comes from the occupancy measured at the configuration's first launch: ask after one."""
    decoder = decoder_for(inp.q, inp.k_store, inp.v_store)
    splits = _planned_splits(inp.q, inp.k_store, inp.v_store, decoder)
    block_n, num_warps = _DEFAULT_LAUNCH[decoder]
    return dict(decoder=decoder, block_n=block_n, num_warps=num_warps, num_splits=splits)


def default_kernel_sass(inp: DecodeInputs) -> str | None:
    """The SASS of the decode kernel the default launch compiled for these inputs (call after one launch)."""
    from mustafar.kernels.decode import _configure

    decoder = decoder_for(inp.q, inp.k_store, inp.v_store)
    kernels = _configure(inp.q, inp.k_store, inp.v_store, decoder, None, None).launcher.kernels
    return next(iter(kernels.values())).asm["sass"] if kernels else None
