"""Compressed store: exact round trips through the pack entry points (PyTorch and Triton), packed appends, byte
accounting, growth, bad input."""

from __future__ import annotations

import os

import pytest
import torch

from mustafar.formats import (
    CompressedStore,
    fixed_token_nbytes,
    pack_bitmap,
    padded_keep,
    unpack_bitmap,
    variable_token_nbytes,
)
from mustafar.kernels import pack_into, topk_pack_into
from mustafar.pruning.keep import threshold_mask, topk_mask

pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _rows(b, h, n, d, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, n, d, generator=g).to(dtype)


def test_bitmap_round_trip_high_bit():
    mask = torch.rand(4, 128) > 0.5
    mask[:, 31] = True  # bit 31 makes the int32 word negative
    assert torch.equal(unpack_bitmap(pack_bitmap(mask), 128), mask)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("d,keep", [(128, 38), (64, 32)])
def test_topk_round_trip_fixed(backend, dtype, d, keep):
    x = _rows(2, 2, 37, d, dtype)
    x[0, 0, 0, :] = 0.5  # all ties
    x[0, 1, 3, ::2] = 0.0  # ties at zero
    store = CompressedStore(2, 2, d, dtype, "cpu", keep)
    topk_pack_into(store, x, keep, backend=backend)
    mask = topk_mask(x.abs(), keep)
    assert torch.equal(unpack_bitmap(store.bits[:, :, :37], d), mask)
    assert torch.equal(store.to_dense(), x * mask)
    assert (mask.sum(-1) == keep).all()
    assert (store.vals[:, :, :37, keep:] == 0).all()  # slot padding is zero-filled


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_variable_layout_reference_rule(backend):
    x = _rows(1, 2, 45, 128)
    x[0, 0, 5, :64] = 1.0  # ties: the published rule keeps more
    mask = threshold_mask(x.abs(), 0.7)
    store = CompressedStore(1, 2, 128, torch.float16, "cpu", None)
    pack_into(store, x, mask, backend=backend)
    assert torch.equal(store.to_dense(), x * mask)
    assert int(store.row_nnz.sum()) == int(mask.sum())
    assert mask[0, 0, 5].sum() > 40


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_kept_zero_values_survive(backend):
    x = _rows(1, 1, 4, 64)
    mask = topk_mask(x.abs(), 16)
    x = x.masked_fill(mask & (torch.arange(64) < 8), 0.0)  # kept entries that are exactly 0.0
    for keep in (16, None):
        store = CompressedStore(1, 1, 64, torch.float16, "cpu", keep)
        pack_into(store, x, mask, backend=backend)
        assert torch.equal(unpack_bitmap(store.bits[:, :, :4], 64), mask)
        assert torch.equal(store.to_dense(), x * mask)


@pytest.mark.parametrize("keep", [38, None])
def test_chunked_append_equals_one_append(keep):
    x = _rows(2, 2, 50, 128, seed=3)
    one = CompressedStore(2, 2, 128, torch.float16, "cpu", keep)
    topk_pack_into(one, x, 38)
    chunked = CompressedStore(2, 2, 128, torch.float16, "cpu", keep)
    for a, b in ((0, 1), (1, 17), (17, 18), (18, 50)):
        topk_pack_into(chunked, x[:, :, a:b], 38)
    assert chunked.length == one.length == 50
    assert torch.equal(chunked.to_dense(), one.to_dense())
    assert chunked.payload_nbytes == one.payload_nbytes
    assert chunked.capacity < 4 * 50  # geometric growth, not per-token regrowth beyond the bound


@pytest.mark.parametrize("keep", [16, None])
def test_append_packed_is_the_store_side_of_a_pack(keep):
    """Packed data appended by hand: bitmap words plus the kept values in (b, h, t, channel) order."""
    x = _rows(1, 2, 9, 64, seed=4)
    mask = topk_mask(x.abs(), 16)
    store = CompressedStore(1, 2, 64, torch.float16, "cpu", keep)
    store.append_packed(pack_bitmap(mask[:, :, :4]), x[:, :, :4][mask[:, :, :4]])
    store.append_packed(pack_bitmap(mask[:, :, 4:]), x[:, :, 4:][mask[:, :, 4:]])
    assert store.length == 9 and torch.equal(store.to_dense(), x * mask)


def test_byte_accounting_closed_form():
    b, h, t, d = 2, 2, 33, 128
    fixed = CompressedStore(b, h, d, torch.float16, "cpu", 38, capacity=64)
    topk_pack_into(fixed, _rows(b, h, t, d), 38)
    assert padded_keep(38, 2) == 40 and fixed_token_nbytes(128, 38, 2) == 96
    assert fixed.payload_nbytes == b * h * t * (4 * d // 32 + 40 * 2)
    assert fixed.nbytes == b * h * 64 * (16 + 80)
    assert fixed.dense_nbytes == b * h * t * d * 2
    # K + V at s = 0.7 / 0.5: 0.375 / 0.5625 of dense fp16
    assert 2 * fixed_token_nbytes(128, 38, 2) / (2 * 256) <= 0.40
    assert 2 * fixed_token_nbytes(128, 64, 2) / (2 * 256) <= 0.60
    var = CompressedStore(b, h, d, torch.float16, "cpu", None)
    x = _rows(b, h, t, d)
    mask = threshold_mask(x.abs(), 0.5)
    pack_into(var, x, mask)
    nnz = int(mask.sum())
    assert var.payload_nbytes == b * h * t * variable_token_nbytes(d, 0, 2) + nnz * 2
    assert variable_token_nbytes(128, 65, 2) == 16 + 4 + 130
    allocated = var.bits.numel() * 4 + var.offs.numel() * 4 + var.vals.numel() * 2 + var.row_nnz.numel() * 8
    assert var.nbytes == allocated


def test_empty_store():
    store = CompressedStore(1, 2, 64, torch.bfloat16, "cpu", 20)
    assert store.length == 0 and store.payload_nbytes == 0 and store.dense_nbytes == 0
    assert store.to_dense().shape == (1, 2, 0, 64)
    topk_pack_into(store, _rows(1, 2, 0, 64, torch.bfloat16), 20)
    assert store.length == 0


def test_bad_input_raises():
    with pytest.raises(ValueError, match="100"):
        CompressedStore(1, 1, 100, torch.float16, "cpu", 10)
    with pytest.raises(ValueError, match="200"):
        CompressedStore(1, 1, 128, torch.float16, "cpu", 200)
    with pytest.raises(ValueError, match="int8"):
        CompressedStore(1, 1, 128, torch.int8, "cpu", 10)
    store = CompressedStore(1, 1, 64, torch.float16, "cpu", 16)
    x = _rows(1, 1, 3, 64)
    bad = topk_mask(x.abs(), 17)
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match="a token with 17"):
            pack_into(store, x, bad, backend=backend)
    with pytest.raises(ValueError, match="a token with 17"):
        store.append_packed(pack_bitmap(bad), x[bad])
    assert store.length == 0  # nothing claimed by a rejected append
    with pytest.raises(ValueError, match="mask must be bool"):
        pack_into(store, x, bad.int())
    with pytest.raises(ValueError, match="keep=20"):
        topk_pack_into(store, x, 20)
    with pytest.raises(ValueError, match="float32"):
        topk_pack_into(store, x.float(), 16)
    with pytest.raises(ValueError, match="'cuda-ish'"):
        topk_pack_into(store, x, 16, backend="cuda-ish")
    odd = CompressedStore(1, 1, 96, torch.float16, "cpu", 16)
    with pytest.raises(ValueError, match="96"):
        topk_pack_into(odd, _rows(1, 1, 2, 96), 16, backend="triton")
    topk_pack_into(odd, _rows(1, 1, 2, 96), 16)  # auto falls back to torch for other head dims
    assert os.environ["TRITON_INTERPRET"] == "1"


def test_reset_and_cached_views():
    """reset() forgets every token (the variable layout's value counts too), so packing again gives a fresh store's
    contents; vals_as() is the same view until growth replaces the buffer, then a view of the new one."""
    x = _rows(1, 2, 9, 64)
    mask = threshold_mask(x.abs(), 0.5)
    store = CompressedStore(1, 2, 64, torch.float16, "cpu", None)
    pack_into(store, x, mask, backend="torch")
    store.reset()
    assert store.length == 0 and int(store.row_nnz.sum()) == 0
    pack_into(store, x[:, :, :4], mask[:, :, :4], backend="torch")
    assert torch.equal(store.to_dense(), x[:, :, :4] * mask[:, :, :4])
    fixed = CompressedStore(1, 2, 64, torch.float16, "cpu", 16, capacity=4)
    view = fixed.vals_as(torch.int32)
    assert fixed.vals_as(torch.int32) is view and view.data_ptr() == fixed.vals.data_ptr()
    assert fixed.vals_as(torch.float16) is fixed.vals
    topk_pack_into(fixed, _rows(1, 2, 9, 64), 16, backend="torch")  # grows: a new buffer
    assert fixed.vals_as(torch.int32).data_ptr() == fixed.vals.data_ptr() != view.data_ptr()


def test_layout_key_tells_apart_every_store_a_decoder_compiles_differently():
    """Launch configurations are cached per ``layout_key``: stores that differ in any layout property (shape, dtype,
    keep and slot, static, word quotas, value type, groups, strided or per-head orders) must never share a key,
    and setting a per-head order changes it; the token count does not."""
    from mustafar.formats import CompressedStore

    base = dict(batch=1, heads=2, head_dim=128, dtype=torch.float16, device="cpu", keep=64, capacity=8)
    variants = [
        {},
        {"heads": 4},
        {"head_dim": 64, "keep": 32},
        {"dtype": torch.bfloat16},
        {"keep": 40},
        {"static": True},
        {"word_quota": True},
        {"value_dtype": "fp8"},
        {"nm_group": 8},
        {"nm_group": 8, "nm_strided": True},
        {"nm_group": 16, "keep": 40},
    ]
    keys = [CompressedStore(**{**base, **v}).layout_key for v in variants]
    assert len(set(keys)) == len(keys)
    ordered = CompressedStore(**{**base, "nm_group": 8})
    plain = ordered.layout_key
    ordered.set_head_order(torch.arange(128).repeat(1, 2, 1))
    assert ordered.layout_key != plain
    grown = CompressedStore(**base)
    grown.extend(20, 64)  # past the capacity: the buffers grow
    assert grown.length == 20 and grown.layout_key == keys[0]
