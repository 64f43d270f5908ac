"""FP8 kept values (kv.value_dtype=fp8): the scale rule, the rounding against a brute-force e4m3 table, the store's
round trip and bytes, and the config's limits."""

from __future__ import annotations

import pytest
import torch

from mustafar.config import ConfigError, KVConfig
from mustafar.formats.bitmap import CompressedStore, fixed_token_nbytes
from mustafar.formats.fp8 import dequantize, fake_quantize, pow2_scale, quantize
from mustafar.kernels.reference import topk_pack_reference
from mustafar.pruning.keep import fixed_count_mask


def e4m3_table() -> torch.Tensor:
    """Every finite e4m3 value, from its definition (bias 7, 3 mantissa bits, subnormals at exponent 0; S.1111.111
    is NaN): code -> value, independent of torch's float8 conversion."""
    vals = []
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e, m = (code >> 3) & 0xF, code & 7
        if e == 15 and m == 7:
            vals.append(float("nan"))
        elif e == 0:
            vals.append(sign * m * 2.0**-9)
        else:
            vals.append(sign * (1 + m / 8) * 2.0 ** (e - 7))
    return torch.tensor(vals, dtype=torch.float64)


def nearest_even(y: torch.Tensor) -> torch.Tensor:
    """The e4m3 code nearest to each y (|y| <= 448), ties to the even code: brute force over the table."""
    table = e4m3_table()
    finite = ~table.isnan()
    dist = (y.double().unsqueeze(-1) - table).abs().masked_fill(~finite, float("inf"))
    best = dist.min(-1, keepdim=True).values
    tied = dist == best
    codes = torch.arange(256)
    # ties: the even code (equal distance to two neighbours); a value that rounds to zero keeps its sign (-0)
    same_sign = (codes >= 128) == torch.signbit(y).unsqueeze(-1)
    score = tied.double() * 4 + ((codes % 2) == 0).double() * 2 + same_sign.double()
    return score.argmax(-1)


def test_pow2_scale_hand_values():
    amax = torch.tensor([448.0, 449.0, 1.0, 0.0, 1.75, 1.76, 896.0, 2.0**-20])
    want = torch.tensor([1.0, 2.0, 2.0**-8, 1.0, 2.0**-8, 2.0**-7, 2.0, 2.0**-28])
    assert torch.equal(pow2_scale(amax), want)


def test_pow2_scale_is_the_smallest_that_fits():
    amax = torch.rand(10_000, dtype=torch.float64).mul(40).sub(20).exp2().float()
    s = pow2_scale(amax)
    assert (s.log2() == s.log2().round()).all()
    assert (amax / s <= 448).all() and (amax / (s / 2) > 448).all()


def test_rounding_is_round_to_nearest_even_against_the_table():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g) * torch.logspace(-3, 3, 64).unsqueeze(1)
    x[0, :8] = torch.tensor(
        [0.0, 1.0625, -1.0625, 100.0, 127.0, 2.0**-10, 3 * 2.0**-10, 5.0]
    )  # ties, subnormals
    codes, scale = quantize(x)
    y = x.double() / scale.double().unsqueeze(-1)
    assert torch.equal(codes.long(), nearest_even(y))
    back = dequantize(codes, scale, torch.float32)
    assert torch.equal(back.double(), e4m3_table()[codes.long()] * scale.double().unsqueeze(-1))
    rel = ((back - x).abs() / x.abs().amax(-1, keepdim=True)).max()
    assert (
        rel <= 2.0**-4 * 2.0**-8 * 448 + 1e-9
    )  # at most half an ulp of the largest binade, relative to amax


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dequantised_values_are_exact_in_the_model_dtype(dtype):
    x = (torch.randn(8, 64, generator=torch.Generator().manual_seed(1)) * 30).to(dtype)
    codes, scale = quantize(x)
    assert torch.equal(dequantize(codes, scale, dtype).float(), dequantize(codes, scale, torch.float32))


@pytest.mark.parametrize(
    "dtype,values,want",
    [
        # fp16's top scale 2^8: 65504 / 2^8 = 255.875 rounds to the code 256, 65536 = inf in fp16: one code down
        (
            torch.float16,
            [65504.0, -64000.0, 63487.0, 63488.0, 57344.0],
            [61440.0, -61440.0, 61440.0, 61440.0, 57344.0],
        ),
        (torch.bfloat16, [3.3895e38, -3.2e38], [240 * 2.0**120, -240 * 2.0**120]),
        (torch.float32, [3.4028e38, 3.1e38], [240 * 2.0**120, 3.1e38]),
    ],
)
def test_values_at_the_top_of_the_dtype_stay_finite(dtype, values, want):
    """Hand-worked: a finite value whose code rounds past the dtype's largest finite value (code · s) takes the
    next smaller code, 240 · s, within 2^-4 of it; below that scale nothing changes (57344 = 224 · 2^8). Old
    behaviour: fp16 65504 came back as inf."""
    x = torch.tensor([values], dtype=dtype)
    codes, scale = quantize(x)
    back = dequantize(codes, scale, dtype)
    assert back.isfinite().all()
    got = back.float().tolist()[0]
    assert got[: len(want) - 1] == [float(torch.tensor(w, dtype=dtype)) for w in want[:-1]]
    assert abs(got[-1] - want[-1]) <= 2.0**-4 * abs(want[-1])
    assert ((back.float() - x.float()).abs() <= 2.0**-4 * x.float().abs()).all()


def test_the_scale_covers_only_the_kept_entries():
    x = torch.tensor([[1000.0, 3.0, -2.0, 0.5]])
    kept = torch.tensor([[False, True, True, True]])
    _, scale = quantize(x, kept)
    assert scale.item() == 2.0**-7  # 3 / 2^-7 = 384 <= 448; 1000 (pruned) does not count


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_store_round_trip_and_bytes(dtype):
    x = torch.randn(2, 3, 7, 128, dtype=dtype, generator=torch.Generator().manual_seed(2)) * 4
    store = CompressedStore(2, 3, 128, dtype, "cpu", keep=38, capacity=7, value_dtype="fp8")
    topk_pack_reference(store, x, 38)
    kept = fixed_count_mask(x.abs(), 38, False)
    assert torch.equal(store.to_dense(), fake_quantize(x.masked_fill(~kept, 0)))
    assert store.slot == 40 and store.token_nbytes == 16 + 40 + 4 == fixed_token_nbytes(128, 38, 2, "fp8")
    assert store.nbytes == 2 * 3 * 7 * 60  # bitmap words + code slots + scales, as allocated
    # K0.7 V0.7 at D = 128: 120 of 512 dense fp16 bytes per token-head (issue target: <= 0.24)
    assert 2 * store.nbytes / (2 * 3 * 7 * 128 * 2 * 2) == pytest.approx(0.234, abs=1e-3)


def test_store_rejects_bad_inputs():
    with pytest.raises(ValueError, match="value_dtype"):
        CompressedStore(1, 1, 64, torch.float16, "cpu", keep=19, value_dtype="int4")
    with pytest.raises(ValueError, match="fixed layout"):
        CompressedStore(1, 1, 64, torch.float16, "cpu", keep=None, value_dtype="fp8")
    store = CompressedStore(1, 1, 64, torch.float16, "cpu", keep=19, value_dtype="fp8")
    bits = torch.zeros(1, 1, 1, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="uint8"):
        store.append_packed(bits, torch.zeros(19, dtype=torch.float16))
    with pytest.raises(ValueError, match="scales"):
        store.append_packed(bits, torch.zeros(19, dtype=torch.uint8))


def test_config_limits():
    assert KVConfig(k_sparsity=0.7, v_sparsity=0.7, value_dtype="fp8").label() == "K0.7 V0.7 fp8"
    assert "value_dtype" not in KVConfig(k_sparsity=0.7).to_dict()  # older job ids unchanged
    with pytest.raises(ConfigError, match="kv.value_dtype='fp4'"):
        KVConfig(k_sparsity=0.7, value_dtype="fp4")
    with pytest.raises(ConfigError, match="nothing is pruned"):
        KVConfig(value_dtype="fp8")
    with pytest.raises(ConfigError, match="kv.v_direction='channel'"):
        KVConfig(k_sparsity=0.7, v_sparsity=0.5, v_direction="channel", value_dtype="fp8")
    with pytest.raises(ConfigError, match="kv.allocation='error'"):
        KVConfig(k_sparsity=0.7, allocation="error", value_dtype="fp8")
    with pytest.raises(ConfigError, match="keep_rule='reference' with kv.v_scorer='magnitude'"):
        KVConfig(v_sparsity=0.7, keep_rule="reference", value_dtype="fp8")
    # the reference rule's output-aware count is fixed: allowed
    KVConfig(k_sparsity=0.7, k_scorer="output_aware", keep_rule="reference", value_dtype="fp8")
