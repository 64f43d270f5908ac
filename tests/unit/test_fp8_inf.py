"""Non-finite kept values in fp8 stores: the scale comes from the finite kept values only, ±inf is stored as e4m3fn's
NaN code with its sign, and the Triton pack (CPU interpreter) writes the PyTorch path's codes and scales bit for bit.

The expected codes are worked out by hand from e4m3's layout (sign | 4 exponent bits, bias 7 | 3 mantissa bits).
The old code scaled an inf token by 2^120 (its other values all became 0) and the Triton pack wrote code 0x38
(1.0) for the inf where the PyTorch path wrote 0x7e (448)."""

from __future__ import annotations

import math

import pytest
import torch

from mustafar.formats import CompressedStore
from mustafar.formats.bitmap import unpack_bitmap
from mustafar.formats.fp8 import dequantize, fake_quantize, quantize
from mustafar.kernels import pack_into, topk_pack_into

INF = math.inf
DTYPES = [torch.float16, torch.bfloat16, torch.float32]

# [inf, 2, -1, 0.5] over the finite max 2 = 1.0·2^1: k = 1 - 8, scale 2^-7; x / 2^-7 = 256, -128, 64 are
# 2^8, -2^7, 2^6: exponent fields 15, 14, 13, mantissa 0. inf: the NaN code 0x7f (0xff for -inf).
HAND_ROW = [INF, 2.0, -1.0, 0.5]
HAND_SCALE = 2.0**-7
HAND_CODES = [0x7F, (15 << 3), 0x80 | (14 << 3), (13 << 3)]


def _hand_token(dtype, first=INF, d=64):
    x = torch.zeros(d, dtype=dtype)
    x[:4] = torch.tensor([first, *HAND_ROW[1:]])
    return x


@pytest.mark.parametrize("sign", [1, -1])
def test_quantize_inf_token_matches_hand_codes(sign):
    codes, scale = quantize(torch.tensor([[sign * INF, 2.0, -1.0, 0.5]]))
    assert scale.tolist() == [HAND_SCALE]
    assert codes[0].tolist() == [HAND_CODES[0] | (0x80 if sign < 0 else 0), *HAND_CODES[1:]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_inf_reads_back_as_nan_and_the_rest_exactly(dtype):
    """Dequantised: the inf entry is NaN (never a finite stand-in such as 448·s), the others exact."""
    x = _hand_token(dtype, d=4)[None]
    back = fake_quantize(x)
    assert back.dtype == dtype and back[0, 0].isnan()
    assert back[0, 1:].tolist() == [2.0, -1.0, 0.5]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [INF, -INF])
def test_a_kept_inf_leaves_the_other_values_unchanged(dtype, value):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 64, generator=g) * 3).to(dtype)
    x[:, 17] = 0
    base_codes, base_scale = quantize(x)
    x[:, 17] = value
    codes, scale = quantize(x)
    assert torch.equal(scale, base_scale)
    others = torch.arange(64) != 17
    assert torch.equal(codes[:, others], base_codes[:, others])
    assert codes[:, 17].tolist() == [0xFF if value < 0 else 0x7F] * 5


def test_a_pruned_inf_moves_nothing():
    x = torch.tensor([[INF, 2.0, -1.0, 0.5]])
    kept = torch.tensor([[False, True, True, True]])
    codes, scale = quantize(x, kept)
    assert scale.tolist() == [HAND_SCALE] and codes[0, 1:].tolist() == HAND_CODES[1:]


def test_nan_token_saturates_its_large_values():
    """A kept NaN keeps scale 1; values past e4m3's range at that scale saturate to ±448 (0x7e / 0xfe)."""
    codes, scale = quantize(torch.tensor([[math.nan, 1000.0, -1e30, -1.0]]))
    assert scale.tolist() == [1.0] and codes[0].tolist() == [0x7F, 0x7E, 0xFE, 0x80 | (7 << 3)]


def _pack(x, backend, given):
    b, h, _, d = x.shape
    store = CompressedStore(b, h, d, x.dtype, "cpu", keep=6, value_dtype="fp8")
    if given is None:
        topk_pack_into(store, x, 6, backend=backend)
    else:
        pack_into(store, x, given, backend=backend)
    return store


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sign", [1, -1])
def test_triton_pack_writes_the_hand_codes_for_inf(dtype, sign):
    x = _hand_token(dtype, first=sign * INF)[None, None, None]
    store = _pack(x, "triton", None)
    assert store.scales.flatten()[:1].tolist() == [HAND_SCALE]
    assert store.vals[0, 0, 0, :4].tolist() == [HAND_CODES[0] | (0x80 if sign < 0 else 0), *HAND_CODES[1:]]
    dense = store.to_dense()[0, 0, 0]
    assert dense[0].isnan() and dense[1:4].tolist() == [2.0, -1.0, 0.5]


def _mixed_rows(dtype):
    """Tokens with ±inf, ±NaN, both, and a NaN token whose other values run past 448 at its scale 1."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(2, 2, 6, 64, generator=g) * 4).to(dtype)
    big = 6e4 if dtype == torch.float16 else 1e30
    x[0, 0, 0, 3] = INF
    x[0, 0, 1, 9] = -INF
    x[0, 0, 2, [1, 2]] = torch.tensor([INF, -INF], dtype=dtype)
    x[0, 0, 3, 4] = math.nan
    x[0, 0, 3, 5] = -INF
    x[0, 1, 0, :6] = torch.tensor([math.nan, 449.0, 470.0, -500.0, 1000.0, -big], dtype=dtype)
    x[1, 0, 4, :] = INF  # every entry inf: no finite value, scale 1
    x[1, 1, 5, 0] = -math.nan
    return x


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("given", [False, True])
def test_triton_pack_equals_the_torch_path_with_non_finite_values(dtype, given):
    x = _mixed_rows(dtype)
    mask = None
    if given:
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[..., :6] = True
        mask[0, 0, 0, 3] = False  # a pruned inf: neither stored nor scaled
        mask[0, 0, 0, 10] = True
    stores = [_pack(x, backend, mask) for backend in ("triton", "torch")]
    for name in ("bits", "vals", "scales"):
        assert torch.equal(getattr(stores[0], name), getattr(stores[1], name)), name
    vals, scales = stores[0].vals, stores[0].scales
    assert (vals[0, 1, 0, :1] == 0x7F).all() and scales[0, 1, 0] == 1.0
    if given:
        assert vals[0, 1, 0, :6].tolist() == [0x7F, 0x7E, 0x7E, 0xFE, 0x7E, 0xFE]
    assert scales[1, 0, 4] == 1.0 and (vals[1, 0, 4, :4] == 0x7F).all()
    kept = unpack_bitmap(stores[0].bits[:, :, : x.shape[2]], 64)
    if given:
        assert torch.equal(kept, mask)
    # every kept non-finite entry (inf included) reads back as NaN, no finite one does
    assert torch.equal(stores[0].to_dense().isnan(), kept & ~x.isfinite())


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_inf_token_scale_is_the_finite_one(dtype):
    """With an inf in it, a token's scale and its other codes equal those of the same token with a 0 there."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(1, 1, 4, 64, generator=g) * 5).to(dtype)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., ::11] = True  # channels 0, 11, ..., 55: 6 a token
    x[..., 0] = 0
    ref = _pack(x, "triton", mask)
    x[..., 0] = torch.tensor([INF, -INF, INF, -INF], dtype=dtype)
    got = _pack(x, "triton", mask)
    assert torch.equal(got.scales, ref.scales) and (ref.scales[0, 0, :4] != 1).all()
    assert torch.equal(got.vals[..., 1:], ref.vals[..., 1:])
    assert got.vals[0, 0, :4, 0].tolist() == [0x7F, 0xFF, 0x7F, 0xFF]
    back, want = (dequantize(s.vals, s.scales, dtype) for s in (got, ref))
    assert back[0, 0, :4, 0].isnan().all() and torch.equal(back[..., 1:], want[..., 1:])
