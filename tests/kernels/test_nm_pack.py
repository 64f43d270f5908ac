"""N:M stores (`CompressedStore(..., nm_group=4|8|16)`): their validation and group-count check, and the fused
prune+pack of consecutive groups (the Triton kernel under the interpreter, and the PyTorch reference) against the
per-element Python masks packed by the plain PyTorch pack."""

from __future__ import annotations

import pytest
import torch

from mustafar.formats import CompressedStore
from mustafar.kernels import pack_into, topk_pack_into
from mustafar.pruning import fixed_count_mask, word_topk_mask
from mustafar.static_cache import unpack_fixed
from tests.unit.test_nm_rule import hand_nm_mask


def _rows(dtype: torch.dtype, head_dim: int, n: int = 11, seed: int = 0) -> torch.Tensor:
    """Gaussian rows with ties: few distinct magnitudes in one token, an all-equal token, mixed signs, zeros."""
    g = torch.Generator().manual_seed(seed + head_dim)
    rows = torch.randn(2, 2, n, head_dim, generator=g)
    rows[0, 0, 0] = 1.0
    rows[0, 1, 1] = torch.randint(-2, 3, (head_dim,), generator=g).float()
    rows[1, 1, 2, : head_dim // 2] = -0.5
    rows[1, 0, 3] = 0.0
    return rows.to(dtype)


def _reference_store(rows: torch.Tensor, keep: int, group: int, **kw) -> CompressedStore:
    """The hand-made mask packed by the plain PyTorch pack into a plain fixed-layout store."""
    b, h, _, d = rows.shape
    store = CompressedStore(b, h, d, rows.dtype, "cpu", keep, **kw)
    pack_into(store, rows, hand_nm_mask(rows.abs().float(), keep * group // d, group), "torch")
    return store


def test_nm_group_validation_names_the_values():
    store = CompressedStore(1, 1, 64, torch.float16, "cpu", 32, nm_group=4)
    assert store.nm_group == 4 and store.word_quota and store.quotas == (16, 16)
    assert CompressedStore(1, 1, 64, torch.float16, "cpu", 32).nm_group == 0
    # 5 of every 16 channels (D = 128, s 0.6875): 10 per 32-channel word, what the scatter decoder reads
    sixteen = CompressedStore(1, 1, 128, torch.float16, "cpu", 40, nm_group=16)
    assert sixteen.nm_group == 16 and sixteen.word_quota and sixteen.quotas == (10, 10, 10, 10)
    with pytest.raises(
        ValueError, match="nm_group must be 0 \\(none\\), 4, 8 or 16 consecutive channels, got 2"
    ):
        CompressedStore(1, 1, 64, torch.float16, "cpu", 32, nm_group=2)
    with pytest.raises(ValueError, match="got 32"):
        CompressedStore(1, 1, 64, torch.float16, "cpu", 32, nm_group=32)
    with pytest.raises(ValueError, match="keep \\* nm_group % head_dim == 0; got keep=38, head_dim=128"):
        CompressedStore(1, 1, 128, torch.float16, "cpu", 38, nm_group=16)
    with pytest.raises(ValueError, match="keep \\* nm_group % head_dim == 0; got keep=19, head_dim=64"):
        CompressedStore(1, 1, 64, torch.float16, "cpu", 19, nm_group=4)
    with pytest.raises(ValueError, match="nm_group=8 .*got keep=None, head_dim=128"):
        CompressedStore(1, 1, 128, torch.float16, "cpu", None, nm_group=8)


def test_check_word_counts_sees_a_group_out_of_count():
    rows = _rows(torch.float32, 64)
    good = _reference_store(rows, 32, 4, nm_group=4)
    good.check_word_counts()
    # the word rule's pattern: right counts per word, wrong counts per 4-channel group
    bad = CompressedStore(2, 2, 64, torch.float32, "cpu", 32, nm_group=4)
    pack_into(bad, rows, word_topk_mask(rows.abs(), 32), "torch")
    with pytest.raises(ValueError, match=r"entries per 4-channel group; the store's quotas are \[2, 2, 2"):
        bad.check_word_counts()
    # 10 per 32-channel word under both rules, but the word rule's 10 need not split 5 + 5 over its two halves
    rows16 = _rows(torch.float32, 128)
    bad16 = CompressedStore(2, 2, 128, torch.float32, "cpu", 40, nm_group=16)
    pack_into(bad16, rows16, word_topk_mask(rows16.abs(), 40), "torch")
    with pytest.raises(ValueError, match=r"entries per 16-channel group; the store's quotas are \[5, 5, 5"):
        bad16.check_word_counts()


def test_fixed_count_mask_picks_the_group_rule():
    score = _rows(torch.float32, 128).abs()
    assert torch.equal(fixed_count_mask(score, 64, word=True, group=8), hand_nm_mask(score, 4, 8))
    assert torch.equal(fixed_count_mask(score, 32, word=False, group=4), hand_nm_mask(score, 1, 4))
    assert torch.equal(fixed_count_mask(score, 40, word=True, group=16), hand_nm_mask(score, 5, 16))
    along = fixed_count_mask(score.transpose(2, 3), 64, word=True, dim=2, group=4)
    assert torch.equal(along.transpose(2, 3), hand_nm_mask(score, 2, 4))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "head_dim, group, keep",
    [
        (64, 4, 32),
        (64, 4, 16),
        (64, 8, 40),
        (128, 8, 32),
        (128, 4, 96),
        (64, 16, 20),
        (128, 16, 40),
        (128, 16, 96),
    ],
)
def test_fused_pack_equals_the_hand_mask_packed(backend, dtype, head_dim, group, keep):
    """Bitmaps and value slots byte for byte, over two appends."""
    rows = _rows(dtype, head_dim)
    store = CompressedStore(2, 2, head_dim, dtype, "cpu", keep, nm_group=group)
    topk_pack_into(store, rows[:, :, :4], keep, backend)
    topk_pack_into(store, rows[:, :, 4:], keep, backend)
    ref = _reference_store(rows, keep, group)
    n = rows.shape[2]
    assert torch.equal(store.bits[:, :, :n], ref.bits[:, :, :n])
    assert torch.equal(store.vals[:, :, :n], ref.vals[:, :, :n])
    store.check_word_counts()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_pack_into_an_fp8_store(backend):
    rows = _rows(torch.float16, 64)
    store = CompressedStore(2, 2, 64, torch.float16, "cpu", 32, nm_group=4, value_dtype="fp8")
    topk_pack_into(store, rows, 32, backend)
    ref = _reference_store(rows, 32, 4, value_dtype="fp8")
    for name in ("bits", "vals", "scales"):
        assert torch.equal(getattr(store, name), getattr(ref, name)), name


@pytest.mark.parametrize("value_dtype", ["native", "fp8"])
def test_masked_pack_into_a_store_with_per_head_orders(value_dtype):
    """The Triton pack of a store holding each (row, head)'s channels in its own order (the calibrated `nm8c`
    rule) equals the PyTorch pack byte for byte, over two appends, and reads back as the masked rows."""
    from mustafar.pruning.keep import balanced_groups

    rows = _rows(torch.float16, 64)
    order = balanced_groups(rows.abs().float().mean(2), 8)
    stores = []
    for backend in ("torch", "triton"):
        store = CompressedStore(2, 2, 64, torch.float16, "cpu", 32, nm_group=8, value_dtype=value_dtype)
        store.set_head_order(order)
        mask = store.kept_mask(rows.abs(), 32)
        pack_into(store, rows[:, :, :5], mask[:, :, :5], backend)
        pack_into(store, rows[:, :, 5:], mask[:, :, 5:], backend)
        store.check_word_counts()
        stores.append(store)
    names = ("bits", "vals", "scales") if value_dtype == "fp8" else ("bits", "vals")
    for name in names:
        assert torch.equal(getattr(stores[1], name), getattr(stores[0], name)), name
    if value_dtype == "native":
        assert torch.equal(stores[1].to_dense(), rows * mask)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("value_dtype", ["native", "fp8"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_pack_into_a_store_with_per_head_orders(backend, value_dtype, static):
    """The fused top-k pack of a per-head-order store (the static compressed cache's prefill and decode-step pack
    under `nm8c`) equals the calibrated mask (`calibrated_nm_mask`, checked against a hand loop elsewhere) packed
    by the PyTorch pack, byte for byte, over two appends; a static store at its device count."""
    from mustafar.pruning.keep import balanced_groups, calibrated_nm_mask

    rows = _rows(torch.float16, 64)
    order = balanced_groups(rows.abs().float().mean(2), 8)
    ref = CompressedStore(2, 2, 64, torch.float16, "cpu", 32, nm_group=8, value_dtype=value_dtype)
    ref.set_head_order(order)
    pack_into(ref, rows, calibrated_nm_mask(rows.abs(), 32, 8, order.unsqueeze(2)), "torch")
    extra = {"capacity": 16, "static": True} if static else {}
    store = CompressedStore(2, 2, 64, torch.float16, "cpu", 32, nm_group=8, value_dtype=value_dtype, **extra)
    store.set_head_order(order)
    topk_pack_into(store, rows[:, :, :4], 32, backend)
    topk_pack_into(store, rows[:, :, 4:], 32, backend)
    n = rows.shape[2]
    assert store.length == n
    for name in ("bits", "vals", "scales") if value_dtype == "fp8" else ("bits", "vals"):
        assert torch.equal(getattr(store, name)[:, :, :n], getattr(ref, name)[:, :, :n]), name
    store.check_word_counts()


def test_triton_group_pack_at_per_row_device_counts():
    """A static store appends each batch row at its own device count (a padded static cache's rows)."""
    rows = _rows(torch.float16, 64, n=6, seed=5)
    store = CompressedStore(2, 2, 64, torch.float16, "cpu", 16, capacity=12, static=True, nm_group=4)
    topk_pack_into(store, rows[:, :, :4], 16, "triton")
    store.length_tensor.copy_(torch.tensor([4, 2], dtype=torch.int32))  # row 1 keeps only its first 2 tokens
    topk_pack_into(store, rows[:, :, 4:], 16, "triton")
    assert store.length_tensor.tolist() == [6, 4]
    store.check_word_counts()
    dense = unpack_fixed(store)
    ref = rows.masked_fill(~hand_nm_mask(rows.abs().float(), 1, 4), 0)
    assert torch.equal(dense[0, :, :6], ref[0])
    assert torch.equal(dense[1, :, :2], ref[1, :, :2])
    assert torch.equal(dense[1, :, 2:4], ref[1, :, 4:6])
