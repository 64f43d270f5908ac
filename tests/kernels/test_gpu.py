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

import importlib
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


@pytest.fixture
def poison(monkeypatch):
    """Every scratch buffer of the decode launch starts as NaN (the cached split partials included)."""
    decode = importlib.import_module("mustafar.kernels.decode")
    monkeypatch.setattr(decode, "_PARTIALS", {})
    monkeypatch.setattr(
        decode,
        "_empty",
        lambda shape, dtype, device: torch.full(shape, math.nan, dtype=dtype, device=device),
    )


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
