"""On a GPU (skipped on CPU): the scatter decoder (word-quota stores) against the PyTorch reference.

fp16/bf16 x D 64/128, keep counts that split evenly and unevenly over the words (and leave words empty), Gaussian
and tie-heavy data, GQA groups 1/4/8, tails shorter than a tile, every output and scratch buffer poisoned with
NaN, the default launch and forced split counts; static stores at several lengths under one CUDA graph.
"""

from __future__ import annotations

import math

import pytest
import torch

from mustafar.formats import CompressedStore
from mustafar.kernels import pack_into, sparse_decode_attention, topk_pack_into
from mustafar.kernels.dispatch import decoder_for
from mustafar.pruning.keep import nm_topk_mask, word_quotas, word_topk_mask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _rows(b, h, t, d, dtype, data):
    if data == "ties":
        return (torch.randint(-3, 4, (b, h, t, d), device="cuda") * 0.5).to(dtype)
    if data == "rising":  # scores that keep rising along the sequence: the lazy max moves on later tiles too
        ramp = torch.linspace(1, 12, t, device="cuda").view(1, 1, t, 1)
        return (torch.randn(b, h, t, d, device="cuda") * ramp).to(dtype)
    return torch.randn(b, h, t, d, device="cuda", dtype=dtype)


def _store(rows, keep, **kw):
    b, h, t, d = rows.shape
    st = CompressedStore(b, h, d, rows.dtype, "cuda", keep, word_quota=True, **kw)
    pack_into(st, rows, word_topk_mask(rows.abs(), keep))
    return st


def _rel(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _check_scatter(ks, vs, n_rep, w, label):
    """The scatter decoder on these stores (a random query group and dense windows of ``w`` tokens), by the default
    launch and at 3 forced splits, into NaN-filled outputs, against the PyTorch reference."""
    from mustafar.kernels.decode import _launch

    b, hkv, d, dtype = ks.batch, ks.heads, ks.head_dim, ks.dtype
    q = torch.randn(b, hkv * n_rep, d, device="cuda", dtype=dtype)
    kw, vw = (torch.randn(b, hkv, w, d, device="cuda", dtype=dtype) for _ in "kv")
    scale = d**-0.5
    assert decoder_for(q, ks, vs) == "scatter"
    ref = sparse_decode_attention(q, ks, vs, kw, vw, scale, backend="torch")
    for splits in (None, 3):
        out = torch.full_like(q, math.nan)
        if splits is None:
            got = sparse_decode_attention(q, ks, vs, kw, vw, scale, out=out)
        else:
            got = _launch(q, ks, vs, kw, vw, scale, "scatter", out=out, num_splits=splits)
        assert got is out and not out.isnan().any()
        err = _rel(out, ref)
        assert err <= 1e-2, f"{label}, splits {splits}: rel err {err:.2e}"


CASES = {  # id -> (head_dim, k_keep, v_keep)
    "d128-s0.7": (128, 38, 38),
    "d128-s0.5": (128, 64, 64),
    "d128-uneven": (128, 37, 51),
    "d128-sparse-words": (128, 3, 2),
    "d64-s0.7": (64, 19, 19),
    "d64-s0.5": (64, 32, 32),
    "d64-full": (64, 64, 1),
}


@pytest.mark.parametrize("data", ["gauss", "ties", "rising"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_scatter_decode_matches_reference_on_gpu(poison, case, dtype, data):
    d, k_keep, v_keep = CASES[case]
    torch.manual_seed(hash(case) % 1000)
    for b, hkv, n_rep, t, w in ((2, 2, 4, 777, 9), (1, 3, 1, 45, 0), (3, 1, 8, 5, 32), (1, 2, 7, 130, 3)):
        ks = _store(_rows(b, hkv, t, d, dtype, data), k_keep)
        vs = _store(_rows(b, hkv, t, d, dtype, data), v_keep)
        _check_scatter(ks, vs, n_rep, w, f"{case} B{b} T{t} W{w} group {n_rep}")


def _nm4_store(rows, **kw):
    b, h, t, d = rows.shape
    st = CompressedStore(b, h, d, rows.dtype, "cuda", d // 2, word_quota=True, nm_group=4, **kw)
    pack_into(st, rows, nm_topk_mask(rows.abs(), d // 2, 4))
    return st


@pytest.mark.parametrize("values", ["native", "fp8"])
@pytest.mark.parametrize("data", ["gauss", "ties"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,k_keep", [(128, 64), (128, 38), (64, 32), (64, 19)])
def test_expanded_values_match_reference_on_gpu(poison, d, k_keep, dtype, data, values):
    """V kept two of every four channels: the decoder expands its rows in registers (expand_asm) instead of
    scattering (fp8: both sides' values as e4m3 codes); same shapes, poisoned buffers and forced splits as above."""
    from mustafar.kernels.scatter_ptx import expands_values

    torch.manual_seed(d + k_keep)
    for b, hkv, n_rep, t, w in ((2, 2, 4, 777, 9), (1, 3, 1, 45, 0), (3, 1, 8, 5, 32), (1, 2, 7, 130, 3)):
        ks = _store(_rows(b, hkv, t, d, dtype, data), k_keep, value_dtype=values)
        vs = _nm4_store(_rows(b, hkv, t, d, dtype, data), value_dtype=values)
        assert expands_values(vs)
        _check_scatter(ks, vs, n_rep, w, f"D{d} B{b} T{t} W{w} group {n_rep}")


@pytest.mark.parametrize("values", ["native", "fp8"])
@pytest.mark.parametrize("order", ["consecutive", "strided", "calibrated"])
@pytest.mark.parametrize("data", ["gauss", "ties"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [128, 64])
def test_expanded_keys_match_reference_on_gpu(poison, d, dtype, data, order, values):
    """K kept four of every eight channels (consecutive; strided, stored in the permuted order, q permuted alike;
    or calibrated, each (row, head) in its own order, q gathered through it) and V two of every four: both sides
    expanded, the scores MMAs (fp8: both sides' codes widened to fp16, the scores and P scaled per token)."""
    from mustafar.kernels.scatter_ptx import expands_keys
    from mustafar.pruning.keep import balanced_groups

    torch.manual_seed(d + len(order))
    for b, hkv, n_rep, t, w in ((2, 2, 4, 777, 9), (1, 3, 1, 45, 0), (3, 1, 8, 5, 32), (1, 2, 7, 130, 3)):
        rows = _rows(b, hkv, t, d, dtype, data)
        ks = CompressedStore(
            b,
            hkv,
            d,
            dtype,
            "cuda",
            d // 2,
            word_quota=True,
            nm_group=8,
            nm_strided=order == "strided",
            value_dtype=values,
        )
        if order == "calibrated":  # the order of the rows' own mean magnitudes, as the prefill measures it
            ks.set_head_order(balanced_groups(rows.abs().float().mean(2), 8))
        pack_into(ks, rows, ks.kept_mask(rows.abs(), d // 2))
        vs = _nm4_store(_rows(b, hkv, t, d, dtype, data), value_dtype=values)
        assert expands_keys(ks, vs)
        _check_scatter(ks, vs, n_rep, w, f"D{d} B{b} T{t} W{w} group {n_rep}")


@pytest.mark.parametrize("v_group", [16, 4])
@pytest.mark.parametrize("order", ["consecutive", "calibrated"])
@pytest.mark.parametrize("data", ["gauss", "ties"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [128, 64])
def test_five_of_sixteen_fp8_keys_match_reference_on_gpu(poison, d, dtype, data, order, v_group):
    """K kept five of every sixteen channels as fp8 codes (consecutive groups, or calibrated per (row, head) with
    q gathered through the order), expanded into the scores' MMA operand from the store's own slot layout (each
    group's codes straddle two slot words), with V five of sixteen or two of four (both expanded into the P·V
    operand through movmatrix)."""
    from mustafar.kernels.scatter_ptx import key_group, value_group
    from mustafar.pruning.keep import balanced_groups

    keep = 5 * d // 16
    torch.manual_seed(d + len(order) + v_group)
    for b, hkv, n_rep, t, w in ((2, 2, 4, 777, 9), (1, 3, 1, 45, 0), (3, 1, 8, 5, 32), (1, 2, 7, 130, 3)):
        rows = _rows(b, hkv, t, d, dtype, data)
        ks = CompressedStore(b, hkv, d, dtype, "cuda", keep, word_quota=True, nm_group=16, value_dtype="fp8")
        if order == "calibrated":
            ks.set_head_order(balanced_groups(rows.abs().float().mean(2), 16))
        pack_into(ks, rows, ks.kept_mask(rows.abs(), keep))
        v_keep = keep if v_group == 16 else d // 2
        vs = CompressedStore(b, hkv, d, dtype, "cuda", v_keep, nm_group=v_group, value_dtype="fp8")
        v_rows = _rows(b, hkv, t, d, dtype, data)
        pack_into(vs, v_rows, vs.kept_mask(v_rows.abs(), v_keep))
        assert key_group(ks, vs) == 16 and value_group(vs) == v_group
        _check_scatter(ks, vs, n_rep, w, f"D{d} B{b} T{t} W{w} group {n_rep}")


@pytest.mark.parametrize("values", ["native", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_strided_group_prune_pack_on_gpu(dtype, static, values):
    """The compiled prune+pack of strided 4:8 stores (channels loaded in the store's order) equals the PyTorch
    one byte for byte (fp8: codes and scales too), in two calls and at static stores' device counts."""
    for d in (64, 128):
        rows = _rows(2, 4, 300, d, dtype, "ties")
        kw = dict(capacity=400, static=True) if static else {}
        got, ref = (
            CompressedStore(
                2, 4, d, dtype, "cuda", d // 2, nm_group=8, nm_strided=True, value_dtype=values, **kw
            )
            for _ in "ab"
        )
        topk_pack_into(got, rows[:, :, :123], d // 2, "triton")
        topk_pack_into(got, rows[:, :, 123:], d // 2, "triton")
        topk_pack_into(ref, rows, d // 2, "torch")
        assert torch.equal(got.bits[:, :, :300], ref.bits[:, :, :300])
        assert torch.equal(got.vals[:, :, :300], ref.vals[:, :, :300])
        if values == "fp8":
            assert torch.equal(got.scales[:, :, :300], ref.scales[:, :, :300])


@pytest.mark.parametrize("values", ["native", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sixteen_channel_groups_pack_and_decode_on_gpu(poison, dtype, values):
    """V kept five (D 128) or four (D 64 at keep 16) of every sixteen consecutive channels: the compiled prune+pack
    equals the PyTorch one byte for byte, and the scatter decoder reads the store as equal per-word quotas."""
    torch.manual_seed(16)
    for d, keep in ((128, 40), (64, 16)):
        rows = _rows(2, 2, 300, d, dtype, "ties")
        got, ref = (
            CompressedStore(2, 2, d, dtype, "cuda", keep, nm_group=16, value_dtype=values) for _ in "ab"
        )
        topk_pack_into(got, rows, keep, "triton")
        topk_pack_into(ref, rows, keep, "torch")
        assert torch.equal(got.bits[:, :, :300], ref.bits[:, :, :300])
        assert torch.equal(got.vals[:, :, :300], ref.vals[:, :, :300])
        ks = _store(_rows(2, 2, 300, d, dtype, "gauss"), keep, value_dtype=values)
        _check_scatter(ks, got, 4, 9, f"D{d} keep {keep} {values}")


def test_expanded_values_static_graph_replay_on_gpu():
    """Static stores with two-of-four values under one CUDA graph, replayed as they grow."""
    b, hkv, n_rep, cap, w, d = 2, 2, 4, 300, 32, 128
    dtype = torch.float16
    k_rows, v_rows = (_rows(b, hkv, cap, d, dtype, "gauss") for _ in "kv")
    ks = CompressedStore(b, hkv, d, dtype, "cuda", 64, capacity=cap, static=True, word_quota=True)
    vs = CompressedStore(b, hkv, d, dtype, "cuda", 64, capacity=cap, static=True, word_quota=True, nm_group=4)
    q = torch.randn(b, hkv * n_rep, d, device="cuda", dtype=dtype)
    kw, vw = (torch.randn(b, hkv, w, d, device="cuda", dtype=dtype) for _ in "kv")
    out = torch.empty_like(q)

    def pack(lo, hi):
        pack_into(ks, k_rows[:, :, lo:hi], word_topk_mask(k_rows[:, :, lo:hi].abs(), 64))
        pack_into(vs, v_rows[:, :, lo:hi], nm_topk_mask(v_rows[:, :, lo:hi].abs(), 64, 4))

    pack(0, 40)
    sparse_decode_attention(q, ks, vs, kw, vw, d**-0.5, out=out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sparse_decode_attention(q, ks, vs, kw, vw, d**-0.5, out=out)
    n = 40
    for grow in (0, 1, 31, 100, cap - 172):
        pack(n, n + grow)
        n += grow
        graph.replay()
        ref_k = _store(k_rows[:, :, :n].contiguous(), 64)
        ref_v = _nm4_store(v_rows[:, :, :n].contiguous())
        ref = sparse_decode_attention(q, ref_k, ref_v, kw, vw, d**-0.5, backend="torch")
        assert _rel(out, ref) <= 1e-2, f"length {n}"


def test_word_quota_layout_on_gpu():
    """The stores the scatter decoder reads hold exactly the quotas in every word (its walk's trip counts)."""
    rows = torch.randn(2, 2, 100, 128, device="cuda", dtype=torch.float16)
    st = _store(rows, 37)
    counts = torch.stack(
        [(st.bits[..., g].view(-1, 1) >> torch.arange(32, device="cuda")) & 1 for g in range(4)]
    )
    assert counts.sum(-1).view(4, -1).T.tolist() == [list(word_quotas(128, 37))] * (2 * 2 * 100)


def test_only_word_quota_stores_take_the_scatter_decoder_on_gpu():
    rows = torch.randn(1, 2, 64, 128, device="cuda", dtype=torch.float16)
    plain = CompressedStore(1, 2, 128, torch.float16, "cuda", 38)
    pack_into(plain, rows, word_topk_mask(rows.abs(), 38))
    quota = _store(rows, 38)
    q = torch.randn(1, 8, 128, device="cuda", dtype=torch.float16)
    assert decoder_for(q, quota, quota) == "scatter"
    assert decoder_for(q, plain, quota) == "staged"


@pytest.mark.parametrize("head_dim,keep", [(128, 38), (64, 32)])
def test_scatter_static_graph_replay_on_gpu(head_dim, keep):
    """Static word-quota stores: one eager call, one captured graph, replayed as the stores grow; every replay
    equals the reference over the same tokens."""
    b, hkv, n_rep, cap, w = 2, 2, 4, 300, 32
    dtype = torch.float16
    full = [_rows(b, hkv, cap, head_dim, dtype, "gauss") for _ in "kv"]
    stores = [
        CompressedStore(b, hkv, head_dim, dtype, "cuda", keep, capacity=cap, static=True, word_quota=True)
        for _ in "kv"
    ]
    q = torch.randn(b, hkv * n_rep, head_dim, device="cuda", dtype=dtype)
    kw, vw = (torch.randn(b, hkv, w, head_dim, device="cuda", dtype=dtype) for _ in "kv")
    out = torch.empty_like(q)
    first = 40
    for st, rows in zip(stores, full):
        pack_into(st, rows[:, :, :first], word_topk_mask(rows[:, :, :first].abs(), keep))
    assert decoder_for(q, *stores) == "scatter"
    sparse_decode_attention(q, *stores, kw, vw, head_dim**-0.5, out=out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sparse_decode_attention(q, *stores, kw, vw, head_dim**-0.5, out=out)
    n = first
    for grow in (0, 1, 31, 100, cap - first - 132):
        for st, rows in zip(stores, full):
            chunk = rows[:, :, n : n + grow]
            pack_into(st, chunk, word_topk_mask(chunk.abs(), keep))
        n += grow
        graph.replay()
        ref_stores = []
        for rows in full:
            ref_stores.append(_store(rows[:, :, :n].contiguous(), keep))
        ref = sparse_decode_attention(q, *ref_stores, kw, vw, head_dim**-0.5, backend="torch")
        assert _rel(out, ref) <= 1e-2, f"length {n}"


@pytest.mark.parametrize("cols", [64, 128])
def test_vt_tile_addresses_on_gpu(cols):
    """The address formula the scatter PTX uses is the one Gluon gives the decoder's Vᵀ tile layout: store a tile
    of element numbers through the layout, read shared memory back byte-linearly."""
    from tests.kernels.gluon_probe import read_vt_tile
    from tests.kernels.test_scatter_ptx import tile_offset

    raw = read_vt_tile(cols)
    for r in range(32):
        for c in range(cols):
            assert raw[tile_offset(r, c, cols) // 2] == r * cols + c, (r, c)


@pytest.mark.parametrize("cols", [64, 128])
def test_vt8_tile_addresses_on_gpu(cols):
    """The same for the e4m3 tile of fp8 stores (element order; the PTX stores one byte per element)."""
    from tests.kernels.gluon_probe import read_vt8_tile
    from tests.kernels.test_scatter_ptx import tile8_offset

    raw = read_vt8_tile(cols)
    for r in range(32):
        for c in range(cols):
            assert raw[tile8_offset(r, c, cols)] == r * cols + c, (r, c)
