"""On a GPU (skipped on CPU): the compiled kernels against the PyTorch references, and compressed mode with the real
kernels against mask mode inside a model.

Decode: the default decoder (the public op; the staged Gluon decoder on sm_80+) and the other launches through the
private launch (the portable decoder forced, other tile sizes, uneven splits), fp16/bf16 x D 64/128, Gaussian and
tie-heavy data, every output and scratch buffer poisoned with NaN; inputs outside the staged decoder's domain (fp32,
variable layouts, large GQA groups) dispatched to the portable one. Prune+pack: the default (generated PTX) and its
fallbacks (strided rows, unaligned rows) against the exact top-k. The model test is teacher-forced: both caches see
the same tokens, so logits are compared step by step without greedy near-ties sending the runs apart.
"""

from __future__ import annotations

import math

import pytest
import torch

from mustafar.attention import attach, new_cache
from mustafar.config import KVConfig
from mustafar.formats import CompressedStore
from mustafar.kernels import pack_into, sparse_decode_attention, topk_pack_into
from mustafar.kernels.dispatch import decoder_for
from mustafar.pruning.keep import threshold_mask, topk_mask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _rows(b, h, t, d, dtype, data):
    if data == "ties":  # a few repeated values: ties at every threshold, exact zeros
        return (torch.randint(-3, 4, (b, h, t, d), device="cuda") * 0.5).to(dtype)
    return torch.randn(b, h, t, d, device="cuda", dtype=dtype)


def _case(b, hkv, n_rep, t, w, d, dtype, keeps, data="gauss"):
    """q, K/V stores (keep None = variable layout under the published rule at s 0.6) and dense windows."""
    stores = []
    for keep in keeps:
        st = CompressedStore(b, hkv, d, dtype, "cuda", keep)
        rows = _rows(b, hkv, t, d, dtype, data)
        if keep is None:
            pack_into(st, rows, threshold_mask(rows.abs(), 0.6))
        else:
            topk_pack_into(st, rows, keep)
        stores.append(st)
    q = torch.randn(b, hkv * n_rep, d, device="cuda", dtype=dtype)
    kw, vw = (torch.randn(b, hkv, w, d, device="cuda", dtype=dtype) for _ in "kv")
    return q, stores[0], stores[1], kw, vw


def _rel(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


LAUNCHES = {  # None: the public op (default launch); else private-launch options
    "default": None,
    "portable": dict(decoder="portable"),
    "portable-n32w1": dict(decoder="portable", block_n=32, num_warps=1),
    "staged-n32": dict(decoder="staged", block_n=32),
    "staged-n64": dict(decoder="staged", block_n=64),
}


@pytest.mark.parametrize("data", ["gauss", "ties"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_decode_matches_reference_on_gpu(poison, launch, dtype, head_dim, data):
    from mustafar.kernels.decode import _launch

    torch.manual_seed(list(LAUNCHES).index(launch))
    q, ks, vs, kw, vw = _case(2, 2, 4, 777, 9, head_dim, dtype, (head_dim * 3 // 10, head_dim // 2), data)
    scale = head_dim**-0.5
    ref = sparse_decode_attention(q, ks, vs, kw, vw, scale, backend="torch")
    opts = LAUNCHES[launch]
    for splits in (None,) if opts is None else (None, 3):
        out = torch.full_like(q, math.nan)
        if opts is None:
            assert decoder_for(q, ks, vs) == "staged"
            got = sparse_decode_attention(q, ks, vs, kw, vw, scale, out=out)
        else:
            got = _launch(q, ks, vs, kw, vw, scale, out=out, num_splits=splits, **opts)
        assert got is out and not out.isnan().any()
        err = _rel(out, ref)
        assert err <= 1e-2, f"{launch}, splits {splits}: relative error {err:.2e}"


@pytest.mark.parametrize(
    "dtype,keeps,n_rep",
    [
        (torch.float32, (38, 38), 4),
        (torch.float16, (None, 38), 4),
        (torch.bfloat16, (64, None), 8),
        (torch.float16, (38, 38), 32),
    ],
    ids=["fp32", "variable-k", "variable-v", "group-32"],
)
def test_decode_outside_the_staged_domain_on_gpu(poison, dtype, keeps, n_rep):
    torch.manual_seed(n_rep)
    q, ks, vs, kw, vw = _case(2, 2, n_rep, 500, 7, 128, dtype, keeps)
    assert decoder_for(q, ks, vs) == "portable"
    ref = sparse_decode_attention(q, ks, vs, kw, vw, 128**-0.5, backend="torch")
    out = sparse_decode_attention(q, ks, vs, kw, vw, 128**-0.5, out=torch.full_like(q, math.nan))
    assert not out.isnan().any()
    assert _rel(out, ref) <= (1e-4 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("data", ["gauss", "ties"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prune_pack_matches_exact_topk_on_gpu(dtype, head_dim, data):
    """Contiguous rows (PTX, coalesced loads), strided rows (PTX, per-thread loads) and unaligned rows (plain
    Triton) all pack exactly the top-k with ties in channel order; pad slots are zero over poisoned stores."""
    b, h, t, keep = 2, 3, 333, head_dim * 3 // 10
    data_rows = _rows(b, h, t, head_dim, dtype, data)
    strided = torch.zeros(b, h, 2 * t, head_dim, device="cuda", dtype=dtype)[:, :, ::2]
    strided.copy_(data_rows)
    unaligned = torch.zeros(b * h * t * head_dim + 1, device="cuda", dtype=dtype)[1:].view(b, h, t, head_dim)
    unaligned.copy_(data_rows)
    want = data_rows * topk_mask(data_rows.abs(), keep)
    for rows in (data_rows, strided, unaligned):
        st = CompressedStore(b, h, head_dim, dtype, "cuda", keep)
        st.reserve(t)
        st.vals.fill_(math.nan)
        st.bits.fill_(-1)
        topk_pack_into(st, rows, keep)
        assert torch.equal(st.to_dense(), want), f"rows with strides {rows.stride()}"
        assert (st.vals[:, :, :t, keep:] == 0).all()


def forced_logits(model, policy: KVConfig, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    cache = new_cache(model, policy)
    out = []
    with attach(model, cache), torch.inference_mode():
        logits = model(ids[:, :prompt], past_key_values=cache, logits_to_keep=1).logits
        out.append(logits[:, -1])
        for t in range(prompt, ids.shape[1]):
            logits = model(ids[:, t : t + 1], past_key_values=cache).logits
            out.append(logits[:, -1])
    return torch.stack(out, 1).float()


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "kw",
    [
        {"k_sparsity": 0.5, "v_sparsity": 0.5},
        {"k_sparsity": 0.7, "v_sparsity": 0.7},
        {"k_sparsity": 0.5, "k_scorer": "output_aware", "v_sparsity": 0.7, "v_direction": "channel"},
        {"k_sparsity": 0.5, "v_sparsity": 0.7, "keep_rule": "reference"},
    ],
)
def test_compressed_matches_mask_mode_on_gpu(head_dim, dtype, kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=4096,
    )
    model = LlamaForCausalLM(cfg).to("cuda", dtype).eval()
    ids = torch.randint(0, 512, (3, 700), device="cuda")
    masked = forced_logits(model, KVConfig(**kw), ids, prompt=600)
    compressed = forced_logits(model, KVConfig(mode="compressed", **kw), ids, prompt=600)
    err = ((compressed - masked).norm() / masked.norm()).item()
    assert err < 2e-2, f"relative logit error {err:.2e}"
    agree = (compressed.argmax(-1) == masked.argmax(-1)).float().mean().item()
    assert agree > 0.95, f"top-1 agreement {agree:.3f}"


# ---------------------------------------------------------------------------------------------------------------------
# Static stores: device-side length, one launch plan per capacity, capturable append + decode
# ---------------------------------------------------------------------------------------------------------------------


def _static(b, hkv, d, dtype, keep, cap):
    return CompressedStore(b, hkv, d, dtype, "cuda", keep, capacity=cap, static=True)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("decoder", ["staged", "portable"])
def test_static_decode_matches_reference_on_gpu(poison, decoder, dtype, head_dim):
    """Static stores filled by the device-offset top-k pack: at lengths 0 (window only), 1, 333 and 700 (=
    capacity) the decoder reads the device length with one plan (the default one after the first launch) and
    equals the reference and the dynamic path; per-row lengths decode each batch row to its own count."""
    from mustafar.kernels.decode import _launch, _planned_splits

    torch.manual_seed(head_dim)
    b, hkv, n_rep, cap, w = 2, 2, 4, 700, 9
    keeps = (head_dim * 3 // 10, head_dim // 2)
    rows = [_rows(b, hkv, cap, head_dim, dtype, "gauss") for _ in keeps]
    stores = [_static(b, hkv, head_dim, dtype, keep, cap) for keep in keeps]
    q = torch.randn(b, hkv * n_rep, head_dim, device="cuda", dtype=dtype)
    kw, vw = (torch.randn(b, hkv, w, head_dim, device="cuda", dtype=dtype) for _ in "kv")
    scale = head_dim**-0.5
    assert decoder_for(q, *stores) == "staged"

    def run(ks, vs):
        out = torch.full_like(q, math.nan)
        if decoder == "staged":
            return sparse_decode_attention(q, ks, vs, kw, vw, scale, out=out)
        return _launch(q, ks, vs, kw, vw, scale, decoder, out=out)

    run(*stores)  # first launch: compiles, measures the occupancy
    plans, outs, filled = set(), {}, 0
    for length in (0, 1, 333, 700):
        for st, r, keep in zip(stores, rows, keeps):
            topk_pack_into(st, r[:, :, filled:length], keep)
        filled = length
        assert stores[0].length == stores[1].length == length
        plans.add(_planned_splits(q, *stores, decoder))
        out = run(*stores)
        dyn = [CompressedStore(b, hkv, head_dim, dtype, "cuda", keep) for keep in keeps]
        for st, r, keep in zip(dyn, rows, keeps):
            topk_pack_into(st, r[:, :, :length], keep)
        ref = sparse_decode_attention(q, *dyn, kw, vw, scale, backend="torch")
        assert not out.isnan().any()
        assert _rel(out, ref) <= 1e-2, f"length {length}: {_rel(out, ref):.2e}"
        # another plan sums the same values in another order: fp16/bf16 output rounding apart
        assert _rel(out, run(*dyn)) <= (2e-3 if dtype == torch.float16 else 8e-3)
        outs[length] = out
    assert len(plans) == 1 and plans.pop() > 1
    for st in stores:
        st.length_tensor.copy_(torch.tensor([333, 1], dtype=torch.int32))
    out = run(*stores)
    assert torch.equal(out[0], outs[333][0]) and torch.equal(out[1], outs[1][1])  # same plan, same values


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("word", [False, True])
def test_eager_static_calls_launch_through_one_c_call_on_gpu(poison, monkeypatch, word, dtype):
    """Eager calls on static stores replay their launch plan through the one-call launch sequence (decoder and
    merge in one C call, ``launch_seq``; the staged decoder, or the scatter one on word-quota stores). Twelve calls
    queued without synchronisation (new q values and addresses, new windows, outputs given or made, the merge a
    programmatic dependent on sm_90+) each go through it and equal, bitwise, the same call on Triton's launcher
    with no plan, and the reference."""
    from mustafar.kernels import decode

    torch.manual_seed(11 + word)
    b, hkv, n_rep, d, keep, cap, w = 1, 8, 4, 128, 38, 2048, 16
    ks, vs = (CompressedStore(b, hkv, d, dtype, "cuda", keep, capacity=cap, static=True, word_quota=word)
              for _ in "kv")  # fmt: skip
    for st in (ks, vs):
        topk_pack_into(st, _rows(b, hkv, 1500, d, dtype, "gauss"), keep)
    calls = [
        (torch.randn(b, hkv * n_rep, d, device="cuda", dtype=dtype),
         *(torch.randn(b, hkv, w, d, device="cuda", dtype=dtype) for _ in "kv"))
        for _ in range(12)
    ]  # fmt: skip
    scale = d**-0.5
    assert decoder_for(calls[0][0], ks, vs) == ("scatter" if word else "staged")
    for _ in range(3):  # compile, measure the occupancy (the split plan may change once), then keep a plan
        sparse_decode_attention(*calls[0][:1], ks, vs, *calls[0][1:], scale)
    seq = ks.launch_plan.seq
    assert seq is not None
    ran = []
    c_run = seq.run
    seq.run = lambda *args: ran.append(args[2]) or c_run(*args)
    outs = []
    for i, (q, kw, vw) in enumerate(calls):
        given = torch.full_like(q, math.nan) if i % 2 else None
        outs.append(sparse_decode_attention(q, ks, vs, kw, vw, scale, out=given))
    torch.cuda.synchronize()
    assert ran == [q.data_ptr() for q, _, _ in calls]
    monkeypatch.setattr(decode, "LAUNCH_SEQUENCES", False)
    for out, (q, kw, vw) in zip(outs, calls):
        ks.launch_plan = None
        full = sparse_decode_attention(q, ks, vs, kw, vw, scale)
        assert torch.equal(out, full)
        ref = sparse_decode_attention(q, ks, vs, kw, vw, scale, backend="torch")
        assert _rel(out, ref) <= 1e-2


@pytest.mark.parametrize("word", [False, True])
def test_eager_dynamic_calls_launch_through_one_c_call_on_gpu(poison, monkeypatch, word):
    """Eager calls on dynamic stores growing a token per call, as in decoding: after the first calls they replay a
    plan through launch sequences with the length and each split's share patched in (one sequence per
    specialisation of the length). After three warm-up calls, each of 40 calls equals, bitwise, the same length's
    call on Triton's launcher with no plan, and the reference; at least half go through a sequence (29 of 40 in
    the H100's full GPU suite), the last one included."""
    from mustafar.kernels import decode, launch_seq

    ran = []
    init = launch_seq.LaunchSequence.__init__

    def counted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        c_run = self.run
        self.run = lambda *a: ran.append(a[-2]) or c_run(*a)

    monkeypatch.setattr(launch_seq.LaunchSequence, "__init__", counted)
    torch.manual_seed(21 + word)
    b, hkv, n_rep, d, keep, w = 1, 8, 4, 128, 38, 16
    dtype = torch.float16
    ks, vs = (CompressedStore(b, hkv, d, dtype, "cuda", keep, word_quota=word) for _ in "kv")
    rows = [_rows(b, hkv, 1540, d, dtype, "gauss") for _ in "kv"]
    for st, r in zip((ks, vs), rows):
        topk_pack_into(st, r[:, :, :1500], keep)
    kw, vw = (torch.randn(b, hkv, w, d, device="cuda", dtype=dtype) for _ in "kv")
    queries = [torch.randn(b, hkv * n_rep, d, device="cuda", dtype=dtype) for _ in range(40)]
    scale = d**-0.5
    for _ in range(
        3
    ):  # compile and measure the occupancy (the first call's split plan assumes one), keep a plan
        sparse_decode_attention(queries[0], ks, vs, kw, vw, scale)
    outs = []
    for i, q in enumerate(queries):
        for st, r in zip((ks, vs), rows):
            topk_pack_into(st, r[:, :, 1500 + i : 1501 + i], keep)
        outs.append(sparse_decode_attention(q, ks, vs, kw, vw, scale))
    torch.cuda.synchronize()
    # a call whose split count changes, or whose length's specialisation is not compiled yet, takes the full path
    assert ks.length == 1540 and len(ran) >= 20 and ran[-1] == 1540 and ran == sorted(set(ran))
    monkeypatch.setattr(decode, "LAUNCH_SEQUENCES", False)
    for i, (q, out) in enumerate(zip(queries, outs)):
        ks.length = vs.length = 1501 + i
        ks.launch_plan = None
        assert torch.equal(out, sparse_decode_attention(q, ks, vs, kw, vw, scale)), (
            f"call {i} (length {1501 + i})"
        )
        assert _rel(out, sparse_decode_attention(q, ks, vs, kw, vw, scale, backend="torch")) <= 1e-2


@pytest.mark.parametrize("head_dim", [64, 128])
def test_static_topk_pack_device_offset_on_gpu(head_dim):
    """The PTX top-k pack at the device offset: appends of 7, 0 and 33 tokens equal the dynamic pack; an append
    past the capacity leaves the neighbouring (batch, head) rows intact and is reported on the next host read."""
    torch.manual_seed(1)
    b, h, keep, cap = 2, 3, head_dim * 3 // 10, 40
    rows = _rows(b, h, 45, head_dim, torch.float16, "ties")
    st = _static(b, h, head_dim, torch.float16, keep, cap)
    dyn = CompressedStore(b, h, head_dim, torch.float16, "cuda", keep)
    at = 0
    for n in (7, 0, 33):
        topk_pack_into(st, rows[:, :, at : at + n], keep)
        topk_pack_into(dyn, rows[:, :, at : at + n], keep, backend="torch")
        at += n
        assert st.length_tensor.tolist() == [at] * b
    assert torch.equal(st.bits, dyn.bits[:, :, :cap]) and torch.equal(st.vals, dyn.vals[:, :, :cap])
    before = st.vals.clone(), st.bits.clone()
    topk_pack_into(st, rows[:, :, 40:45], keep)
    assert torch.equal(st.vals, before[0]) and torch.equal(st.bits, before[1])
    with pytest.raises(ValueError, match="overflowed"):
        st.length  # noqa: B018


def test_static_decode_graph_replay_on_gpu():
    """One CUDA graph (top-k pack of the new K and V token at the device offset, then the decode) captured once
    and replayed as the stores grow from 300 tokens to their capacity, with eager appends between replays: the
    output equals the reference over the same tokens at every length (the staged decoder, Llama-3-8B heads)."""
    torch.manual_seed(3)
    b, hkv, n_rep, d, keep, cap, w, prompt = 2, 8, 4, 128, 38, 1024, 16, 300
    dtype = torch.float16
    ks, vs = (_static(b, hkv, d, dtype, keep, cap) for _ in "kv")
    dk, dv = (CompressedStore(b, hkv, d, dtype, "cuda", keep) for _ in "kv")
    first = [_rows(b, hkv, prompt, d, dtype, "gauss") for _ in "kv"]
    for st, dyn, r in ((ks, dk, first[0]), (vs, dv, first[1])):
        topk_pack_into(st, r, keep)
        topk_pack_into(dyn, r, keep, backend="torch")
    new_k, new_v = (torch.zeros(b, hkv, 1, d, device="cuda", dtype=dtype) for _ in "kv")
    q = torch.zeros(b, hkv * n_rep, d, device="cuda", dtype=dtype)
    kw, vw = (torch.randn(b, hkv, w, d, device="cuda", dtype=dtype) for _ in "kv")
    out = torch.empty_like(q)

    def step():
        topk_pack_into(ks, new_k, keep)
        topk_pack_into(vs, new_v, keep)
        sparse_decode_attention(q, ks, vs, kw, vw, d**-0.5, out=out)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up: compiles, measures the occupancy; its append is undone below
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    ks.length = vs.length = prompt
    lengths = []
    for i in range(8):
        if i == 4:  # a long eager append between replays: same graph, much longer stores
            more = [_rows(b, hkv, cap - prompt - 8, d, dtype, "gauss") for _ in "kv"]
            for st, dyn, r in ((ks, dk, more[0]), (vs, dv, more[1])):
                topk_pack_into(st, r, keep)
                topk_pack_into(dyn, r, keep, backend="torch")
        new_k.normal_()
        new_v.normal_()
        q.normal_()
        graph.replay()
        topk_pack_into(dk, new_k, keep, backend="torch")
        topk_pack_into(dv, new_v, keep, backend="torch")
        ref = sparse_decode_attention(q, dk, dv, kw, vw, d**-0.5, backend="torch")
        assert ks.length == vs.length == dk.length
        lengths.append(dk.length)
        assert _rel(out, ref) <= 1e-2, f"replay {i} at length {dk.length}: {_rel(out, ref):.2e}"
    assert lengths[-1] == cap and lengths[0] == prompt + 1
    assert torch.equal(ks.to_dense(), dk.to_dense()) and torch.equal(vs.to_dense(), dv.to_dense())


@pytest.mark.parametrize("decoder,keeps", [("staged", (38, 64)), ("portable", (38, 64))])
def test_back_to_back_merges_read_their_own_partials_on_gpu(decoder, keeps):
    """On sm_90+ the split merge is a programmatic dependent launch that may start before the decoder ends: calls
    queued back to back (new queries each, one set of partial buffers) must each merge their own decoder's
    partials, never the previous call's or half-written ones."""
    from mustafar.kernels.decode import _launch, _merge_launch
    from mustafar.kernels.support import pdl_capable

    torch.manual_seed(5)
    q, ks, vs, kw, vw = _case(4, 2, 4, 4000, 5, 128, torch.float16, keeps)
    queries = [torch.randn_like(q) for _ in range(24)]
    outs = [torch.full_like(q, math.nan) for _ in queries]
    for qi, out in zip(queries, outs):  # no synchronisation between the calls
        _launch(qi, ks, vs, kw, vw, 0.09, decoder, out=out, num_splits=48)
    torch.cuda.synchronize()
    for qi, out in zip(queries, outs):
        ref = sparse_decode_attention(qi, ks, vs, kw, vw, 0.09, backend="torch")
        assert _rel(out, ref) <= 1e-2
    merge = _merge_launch(64, 128, torch.float16, q.device)
    assert pdl_capable(q.device) == (torch.cuda.get_device_capability() >= (9, 0))
    assert (
        all(k.metadata.launch_pdl == pdl_capable(q.device) for k in merge.kernels.values()) and merge.kernels
    )
