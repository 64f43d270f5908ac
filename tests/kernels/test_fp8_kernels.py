"""FP8 stores through the Triton kernels (CPU interpreter): the pack writes the reference's codes, scales and
bitmaps bit for bit (also at a static store's device counts), the portable decoder matches plain attention over
the dequantised cache."""

from __future__ import annotations

import math

import pytest
import torch

from mustafar.formats import CompressedStore
from mustafar.formats.fp8 import fake_quantize
from mustafar.kernels import pack_into, sparse_decode_attention, topk_pack_into
from mustafar.kernels.dispatch import decoder_for

pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _rows(*shape, dtype, seed, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("word", [False, True])
def test_pack_writes_the_reference_codes(dtype, word):
    x = _rows(2, 3, 11, 64, dtype=dtype, seed=1)
    x[0, 0, 0] = 0  # an all-zero token: scale 1, codes 0
    x[1, 2, 3, :8] *= 1000  # a token with a large outlier
    stores = [
        CompressedStore(2, 3, 64, dtype, "cpu", keep=19, word_quota=word, value_dtype="fp8") for _ in "ab"
    ]
    topk_pack_into(stores[0], x, 19, backend="triton")
    topk_pack_into(stores[1], x, 19, backend="torch")
    for name in ("bits", "vals", "scales"):
        assert torch.equal(getattr(stores[0], name), getattr(stores[1], name)), name
    assert (stores[0].scales[0, 0, 0] == 1).item() and not stores[0].vals[0, 0, 0].any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_pack_takes_codes_past_the_dtype_one_down_as_the_reference_does(dtype):
    """Tokens at the top of the dtype (codes that would dequantise past its largest finite value) get the
    reference's codes bit for bit, and the store reads back finite."""
    top = torch.finfo(dtype).max
    x = _rows(1, 2, 3, 64, dtype=dtype, seed=8)
    x[0, 0, 0, :4] = torch.tensor([top, -top, top * 0.97, top * 0.9], dtype=torch.float32).to(dtype)
    x[0, 1, 2, 7] = top
    stores = [CompressedStore(1, 2, 64, dtype, "cpu", keep=19, value_dtype="fp8") for _ in "ab"]
    topk_pack_into(stores[0], x, 19, backend="triton")
    topk_pack_into(stores[1], x, 19, backend="torch")
    for name in ("bits", "vals", "scales"):
        assert torch.equal(getattr(stores[0], name), getattr(stores[1], name)), name
    assert stores[0].to_dense().isfinite().all()


def test_pack_with_a_given_mask_and_static_device_counts():
    x = _rows(2, 2, 6, 64, dtype=torch.float16, seed=2)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., ::2] = True  # 32 of 64: an output-aware pattern the top-k would not pick
    given = [CompressedStore(2, 2, 64, torch.float16, "cpu", keep=32, value_dtype="fp8") for _ in "ab"]
    pack_into(given[0], x, mask, backend="triton")
    pack_into(given[1], x, mask, backend="torch")
    assert torch.equal(given[0].vals, given[1].vals) and torch.equal(given[0].scales, given[1].scales)
    assert torch.equal(given[0].to_dense(), fake_quantize(x.masked_fill(~mask, 0)))
    static = CompressedStore(
        2, 2, 64, torch.float16, "cpu", keep=19, capacity=8, static=True, value_dtype="fp8"
    )
    static.length_tensor.copy_(torch.tensor([1, 3], dtype=torch.int32))  # rows at different counts
    topk_pack_into(static, x[:, :, :2], 19, backend="triton")
    ref = CompressedStore(2, 2, 64, torch.float16, "cpu", keep=19, value_dtype="fp8")
    topk_pack_into(ref, x[:, :, :2], 19, backend="torch")
    assert static.length_tensor.tolist() == [3, 5]
    for b, t0 in ((0, 1), (1, 3)):
        assert torch.equal(static.vals[b, :, t0 : t0 + 2], ref.vals[b, :, :2])
        assert torch.equal(static.scales[b, :, t0 : t0 + 2], ref.scales[b, :, :2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("given", [False, True])
def test_pack_keeps_nan_as_the_reference_does(dtype, given):
    """A kept NaN is e4m3fn's NaN (0x7f, 0xff when negative) and its token gets the reference's scale 1 (the
    Triton pack wrote a finite code and scaled the token by its other values)."""
    x = _rows(1, 2, 3, 64, dtype=dtype, seed=6)
    x[0, 0, 0, 5], x[0, 0, 1, 7], x[0, 1, 2, 9] = math.nan, math.nan, math.nan
    bits = x.view(torch.int16 if x.element_size() == 2 else torch.int32)
    bits[0, 0, 1, 7] |= torch.iinfo(bits.dtype).min  # a negative NaN (bf16 drops -nan's sign)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., :19] = True
    x[0, 1, 0, 40] = math.nan  # NaN ranks first in top-k; the given mask prunes it (not stored nor scaled)
    stores = [CompressedStore(1, 2, 64, dtype, "cpu", keep=19, value_dtype="fp8") for _ in "ab"]
    for store, backend in zip(stores, ("triton", "torch")):
        if given:
            pack_into(store, x, mask, backend=backend)
        else:
            topk_pack_into(store, x, 19, backend=backend)
    for name in ("bits", "vals", "scales"):
        assert torch.equal(getattr(stores[0], name), getattr(stores[1], name)), name
    codes = stores[0].vals
    assert (codes == 0x7F).sum() == 2 + (not given) and (codes == 0xFF).sum() == 1
    assert stores[0].scales[0, 0, :2].tolist() == [1.0, 1.0] and stores[0].scales[0, 1, 2] == 1.0
    kept_nan = x.isnan() & (mask if given else True)
    assert torch.equal(stores[0].to_dense().isnan(), kept_nan)


@pytest.mark.parametrize(
    "dtype,d,n_rep,k_fp8,v_fp8",
    [
        (torch.float16, 128, 4, True, True),
        (torch.bfloat16, 64, 2, True, False),
        (torch.float16, 64, 1, False, True),
        (torch.float32, 64, 4, True, True),
    ],
)
def test_portable_decode_reads_fp8_stores(poison, dtype, d, n_rep, k_fp8, v_fp8):
    b, hkv, t, w = 2, 2, 45, 3
    keeps = {64: (19, 32), 128: (38, 64)}[d]
    stores = []
    for i, (fp8, keep) in enumerate(zip((k_fp8, v_fp8), keeps)):
        store = CompressedStore(b, hkv, d, dtype, "cpu", keep=keep, value_dtype="fp8" if fp8 else "native")
        topk_pack_into(store, _rows(b, hkv, t, d, dtype=dtype, seed=10 + i), keep, backend="torch")
        stores.append(store)
    q = _rows(b, hkv * n_rep, d, dtype=dtype, seed=3, scale=1.0)
    kw, vw = _rows(b, hkv, w, d, dtype=dtype, seed=4), _rows(b, hkv, w, d, dtype=dtype, seed=5)
    assert decoder_for(q, *stores) == "portable"
    scale = d**-0.5
    out = torch.full_like(q, math.nan)
    sparse_decode_attention(q, *stores, kw, vw, scale, backend="triton", out=out)
    # float64 attention over the dequantised stores (independent of the kernels' order of operations)
    keys = torch.cat([stores[0].to_dense(), kw], 2).double().repeat_interleave(n_rep, 1)
    values = torch.cat([stores[1].to_dense(), vw], 2).double().repeat_interleave(n_rep, 1)
    ref = torch.einsum(
        "bht,bhtd->bhd", (torch.einsum("bhd,bhtd->bht", q.double(), keys) * scale).softmax(-1), values
    )
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel <= (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("side", ["k", "v"])
@pytest.mark.parametrize("code", [0x7F, 0xFF])
def test_portable_decode_reads_the_nan_code_as_nan(side, code):
    """A stored NaN code (a kept NaN or ±inf) gives the reference's NaNs and only those: the portable decoder read
    0x7f as 480 (its exponent and mantissa as if finite)."""
    b, hkv, t, d, keep = 2, 1, 5, 64, 19
    stores = []
    for i in range(2):
        store = CompressedStore(b, hkv, d, torch.float16, "cpu", keep=keep, value_dtype="fp8")
        topk_pack_into(store, _rows(b, hkv, t, d, dtype=torch.float16, seed=20 + i), keep, backend="torch")
        stores.append(store)
    stores["kv".index(side)].vals.view(b, hkv, -1)[0, 0, 2 * keep + 3] = code  # token 2 of row 0
    q = _rows(b, hkv, d, dtype=torch.float16, seed=3, scale=1.0)
    kw = vw = torch.zeros(b, hkv, 0, d, dtype=torch.float16)
    out = sparse_decode_attention(q, *stores, kw, vw, d**-0.5, backend="triton")
    ref = sparse_decode_attention(q, *stores, kw, vw, d**-0.5, backend="torch")
    # a NaN key spoils its row's scores (every channel); a NaN value its own channel of the row's outputs
    assert ref[0].isnan().any() and not ref[1].isnan().any()
    assert torch.equal(out.isnan(), ref.isnan())
    torch.testing.assert_close(out.nan_to_num(), ref.nan_to_num(), rtol=1e-2, atol=1e-3)
