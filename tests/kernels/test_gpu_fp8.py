"""On a GPU (skipped on CPU): fp8 stores (kv.value_dtype=fp8) through the compiled kernels.

The Triton pack writes the reference's codes, scales and bitmaps bit for bit (dynamic and static stores, word and
exact rules); the scatter decoder (word quotas, sm_89+) and the portable decoder (exact rule) match the PyTorch
reference over the dequantised stores: fp16/bf16 x D 64/128, s 0.5/0.7, fp8 on one side or both, GQA groups
1/4/8, tails shorter than a tile, outputs and scratch poisoned with NaN; queries of any magnitude through the
fp16 key walk; a static fp8 step under a CUDA graph.
"""

from __future__ import annotations

import math

import pytest
import torch

from mustafar.formats import CompressedStore
from mustafar.kernels import sparse_decode_attention, topk_pack_into
from mustafar.kernels.dispatch import decoder_for
from mustafar.pruning.keep import exact_keep

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _rel(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _store(rows, keep, fp8=True, word=True, **kw):
    b, h, t, d = rows.shape
    st = CompressedStore(
        b, h, d, rows.dtype, "cuda", keep, word_quota=word, value_dtype="fp8" if fp8 else "native", **kw
    )
    topk_pack_into(st, rows, keep)
    return st


@pytest.mark.parametrize("word", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pack_on_gpu_matches_the_reference_bitwise(dtype, word):
    rows = torch.randn(2, 3, 333, 128, device="cuda", dtype=dtype) * 5
    rows[0, 0, 7] = 0
    rows[1, 2, 9, :3] = torch.finfo(dtype).max  # codes past the dtype's range go one down (fp8.quantize)
    rows[1, 2, 10, 5] = -torch.finfo(dtype).max
    a = _store(rows, 38, word=word)
    b = CompressedStore(2, 3, 128, dtype, "cuda", 38, word_quota=word, value_dtype="fp8")
    topk_pack_into(b, rows, 38, backend="torch")
    for name in ("bits", "vals", "scales"):
        assert torch.equal(getattr(a, name)[:, :, :333], getattr(b, name)[:, :, :333]), name
    assert a.to_dense()[1, 2, 9:11].isfinite().all()


CASES = {  # id -> (head_dim, sparsity, K fp8, V fp8)
    "d128-s0.7": (128, 0.7, True, True),
    "d128-s0.5": (128, 0.5, True, True),
    "d64-s0.7": (64, 0.7, True, True),
    "d128-s0.7-k-fp8": (128, 0.7, True, False),
    "d128-s0.7-v-fp8": (128, 0.7, False, True),
}


@pytest.mark.parametrize("word", [True, False], ids=["scatter", "portable"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_fp8_decode_matches_reference_on_gpu(poison, case, dtype, word):
    from mustafar.kernels.decode import _launch

    d, s, k_fp8, v_fp8 = CASES[case]
    keep = exact_keep(d, s)
    torch.manual_seed(hash(case) % 1000)
    for b, hkv, n_rep, t, w in ((2, 2, 4, 777, 9), (1, 3, 1, 45, 0), (3, 1, 8, 5, 32), (4, 8, 4, 2048, 32)):
        scale_rows = torch.logspace(-2, 2, t, device="cuda").view(1, 1, t, 1)  # per-token scales far apart
        ks = _store((torch.randn(b, hkv, t, d, device="cuda") * scale_rows).to(dtype), keep, k_fp8, word)
        vs = _store((torch.randn(b, hkv, t, d, device="cuda") * scale_rows).to(dtype), keep, v_fp8, word)
        q = torch.randn(b, hkv * n_rep, d, device="cuda", dtype=dtype) * 0.05
        kw, vw = (torch.randn(b, hkv, w, d, device="cuda", dtype=dtype) for _ in "kv")
        decoder = decoder_for(q, ks, vs)
        assert decoder == ("scatter" if word else "portable")
        ref = sparse_decode_attention(q, ks, vs, kw, vw, d**-0.5, backend="torch")
        for splits in (None, 3):
            out = torch.full_like(q, math.nan)
            if splits is None:
                sparse_decode_attention(q, ks, vs, kw, vw, d**-0.5, out=out)
            else:
                _launch(q, ks, vs, kw, vw, d**-0.5, decoder, out=out, num_splits=splits)
            assert not out.isnan().any()
            err = _rel(out, ref)
            assert err <= 1e-2, f"{case} {decoder} B{b} T{t} W{w} group {n_rep} splits {splits}: {err:.2e}"


@pytest.mark.parametrize(
    "dtype,q_mag",
    [(torch.float16, 0.0), (torch.float16, 1e-3), (torch.float16, 1e3), (torch.bfloat16, 1e-6),
     (torch.bfloat16, 1.0), (torch.bfloat16, 1e3), (torch.bfloat16, 1e36)],
)  # fmt: skip
def test_fp8_scatter_scores_queries_of_any_magnitude_on_gpu(dtype, q_mag):
    """The fp8 key walk scores in fp16 against q scaled by a power of two (scatter_ptx.score_asm): queries whose
    products with codes near 448 would overflow fp16 (1e3; 1e36 in bf16, a scale of 2^-121), fall into its
    subnormals (1e-6, bf16) or are all zero (every score 0: the mean of V) match the reference; keys are scaled so
    the logits stay of order one."""
    b, hkv, n_rep, d, t, w = 2, 2, 4, 128, 777, 9
    keep = exact_keep(d, 0.7)
    k_mag = 3 / (q_mag * (keep / d) ** 0.5) if q_mag else 1.0
    torch.manual_seed(int(q_mag * 1e6) % 1000)
    ks = _store((torch.randn(b, hkv, t, d, device="cuda") * k_mag).to(dtype), keep)
    vs = _store(torch.randn(b, hkv, t, d, device="cuda", dtype=dtype), keep)
    q = (torch.randn(b, hkv * n_rep, d, device="cuda") * q_mag).to(dtype)
    kw = (torch.randn(b, hkv, w, d, device="cuda") * k_mag).to(dtype)
    vw = torch.randn(b, hkv, w, d, device="cuda", dtype=dtype)
    assert decoder_for(q, ks, vs) == "scatter"
    ref = sparse_decode_attention(q, ks, vs, kw, vw, d**-0.5, backend="torch")
    out = sparse_decode_attention(q, ks, vs, kw, vw, d**-0.5)
    assert out.isfinite().all()
    assert _rel(out, ref) <= 1e-2, f"{dtype} |q| ~ {q_mag}: {_rel(out, ref):.2e}"


@pytest.mark.parametrize("k_rule", ["word", "nm16c"])
def test_fp8_key_scales_are_per_query_head_on_gpu(k_rule):
    """q's power of two is chosen per query head: an inf in one head of a GQA group (its output NaN, as the
    reference's) leaves the group's other heads exact, where one scale for the group would flush their q to zero.
    Both fp8 key paths: the fp16 walk (`word`) and the expanded keys' MMA (calibrated 5:16)."""
    b, hkv, n_rep, d, t, w = 1, 2, 4, 128, 300, 9
    dtype = torch.bfloat16
    torch.manual_seed(3)
    if k_rule == "word":
        keep = exact_keep(d, 0.7)
        ks = _store(torch.randn(b, hkv, t, d, device="cuda", dtype=dtype), keep)
        vs = _store(torch.randn(b, hkv, t, d, device="cuda", dtype=dtype), keep)
    else:
        from mustafar.kernels import pack_into
        from mustafar.pruning.keep import balanced_groups

        keep = 5 * d // 16
        k_rows, v_rows = (torch.randn(b, hkv, t, d, device="cuda", dtype=dtype) for _ in "kv")
        ks = CompressedStore(b, hkv, d, dtype, "cuda", keep, word_quota=True, nm_group=16, value_dtype="fp8")
        ks.set_head_order(balanced_groups(k_rows.abs().float().mean(2), 16))
        pack_into(ks, k_rows, ks.kept_mask(k_rows.abs(), keep))
        vs = CompressedStore(b, hkv, d, dtype, "cuda", keep, nm_group=16, value_dtype="fp8")
        pack_into(vs, v_rows, vs.kept_mask(v_rows.abs(), keep))
    q = torch.randn(b, hkv * n_rep, d, device="cuda", dtype=dtype)
    q[:, ::n_rep, 5] = math.inf  # the first head of each group
    kw, vw = (torch.randn(b, hkv, w, d, device="cuda", dtype=dtype) for _ in "kv")
    assert decoder_for(q, ks, vs) == "scatter"
    ref = sparse_decode_attention(q, ks, vs, kw, vw, d**-0.5, backend="torch")
    out = sparse_decode_attention(q, ks, vs, kw, vw, d**-0.5)
    rest = torch.ones(hkv * n_rep, dtype=torch.bool)
    rest[::n_rep] = False
    assert out[:, rest].isfinite().all()
    assert _rel(out[:, rest], ref[:, rest]) <= 1e-2


def test_fp8_static_graph_replay_on_gpu():
    b, hkv, n_rep, d, cap, w, keep = 2, 2, 4, 128, 300, 32, 38
    dtype = torch.float16
    full = [torch.randn(b, hkv, cap, d, device="cuda", dtype=dtype) for _ in "kv"]
    stores = [
        CompressedStore(
            b, hkv, d, dtype, "cuda", keep, capacity=cap, static=True, word_quota=True, value_dtype="fp8"
        )
        for _ in "kv"
    ]
    q = torch.randn(b, hkv * n_rep, d, device="cuda", dtype=dtype)
    kw, vw = (torch.randn(b, hkv, w, d, device="cuda", dtype=dtype) for _ in "kv")
    out = torch.empty_like(q)
    for st, rows in zip(stores, full):
        topk_pack_into(st, rows[:, :, :40], keep)
    sparse_decode_attention(q, *stores, kw, vw, d**-0.5, out=out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sparse_decode_attention(q, *stores, kw, vw, d**-0.5, out=out)
    n = 40
    for grow in (1, 31, 100):
        for st, rows in zip(stores, full):
            topk_pack_into(st, rows[:, :, n : n + grow], keep)
        n += grow
        graph.replay()
        ref_stores = [_store(rows[:, :, :n].contiguous(), keep) for rows in full]
        ref = sparse_decode_attention(q, *ref_stores, kw, vw, d**-0.5, backend="torch")
        assert _rel(out, ref) <= 1e-2, f"length {n}"
