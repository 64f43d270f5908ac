"""Strided N:M stores (`CompressedStore(..., nm_group=4|8, nm_strided=True)`): the stored order against a
hand-written permutation, the packs (the PyTorch reference, the Triton kernel under the interpreter, the static
caches' one-token pack) byte for byte against a per-element Python pack, round trips back to channel order, the
group check, and the reference decode over such stores against plain attention."""

from __future__ import annotations

import pytest
import torch

from mustafar.formats import CompressedStore, stored_channels
from mustafar.formats.fp8 import fake_quantize, quantize
from mustafar.kernels import pack_into, topk_pack_into
from mustafar.kernels.reference import decode_attention_reference
from mustafar.pruning import nm_topk_mask, topk_mask
from mustafar.static_cache import pack_token_at, unpack_fixed
from tests.kernels.test_nm_pack import _rows
from tests.unit.test_nm_rule import hand_nm_mask

# stored position p -> channel, written out: D = 32 in strided groups of 4 (channels g, g + 8, g + 16, g + 24)
ORDER_32_4 = [0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27,
              4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31]  # fmt: skip
# D = 64 in strided groups of 8 (channels g, g + 8, ..., g + 56)
ORDER_64_8 = [0, 8, 16, 24, 32, 40, 48, 56, 1, 9, 17, 25, 33, 41, 49, 57,
              2, 10, 18, 26, 34, 42, 50, 58, 3, 11, 19, 27, 35, 43, 51, 59,
              4, 12, 20, 28, 36, 44, 52, 60, 5, 13, 21, 29, 37, 45, 53, 61,
              6, 14, 22, 30, 38, 46, 54, 62, 7, 15, 23, 31, 39, 47, 55, 63]  # fmt: skip


def hand_order(head_dim: int, group: int) -> list[int]:
    """The stored order by its definition: strided group g (channels g, g + D/M, g + 2D/M, ...) after group g − 1,
    each group's channels ascending."""
    stride = head_dim // group
    return [c for g in range(stride) for c in range(g, head_dim, stride)]


def hand_pack(rows: torch.Tensor, mask: torch.Tensor, group: int, slot: int, fp8: bool = False):
    """Per element: each token's bitmap words (bit p set when the channel at stored position p is kept) and its
    value slot (the kept values in stored order, zero-padded to `slot`); fp8: e4m3 codes and the tokens' scales."""
    b, h, n, d = rows.shape
    order = hand_order(d, group)
    codes, scales = quantize(rows, mask) if fp8 else (rows, None)
    bits = torch.zeros(b, h, n, d // 32, dtype=torch.int64)
    vals = torch.zeros(b, h, n, slot, dtype=torch.uint8 if fp8 else rows.dtype)
    for i in range(b):
        for j in range(h):
            for t in range(n):
                kept = [p for p in range(d) if mask[i, j, t, order[p]]]
                for k, p in enumerate(kept):
                    bits[i, j, t, p // 32] += 1 << (p % 32)
                    vals[i, j, t, k] = codes[i, j, t, order[p]]
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    return bits, vals, scales


def _assert_hand_layout(store: CompressedStore, rows: torch.Tensor, mask: torch.Tensor) -> None:
    n = rows.shape[2]
    bits, vals, scales = hand_pack(rows, mask, store.nm_group, store.slot, store.fp8)
    assert torch.equal(store.bits[:, :, :n], bits)
    assert torch.equal(store.vals[:, :, :n], vals)
    if store.fp8:
        assert torch.equal(store.scales[:, :, :n], scales)


def _store(rows: torch.Tensor, keep: int, group: int, **kw) -> CompressedStore:
    b, h, _, d = rows.shape
    return CompressedStore(b, h, d, rows.dtype, "cpu", keep, nm_group=group, nm_strided=True, **kw)


def test_stored_channels_is_the_hand_permutation():
    assert stored_channels(32, 4, strided=True) == ORDER_32_4
    assert stored_channels(64, 8, strided=True) == ORDER_64_8
    for d, m in [(64, 4), (128, 8), (128, 4)]:
        assert stored_channels(d, m, strided=True) == hand_order(d, m)
    assert stored_channels(64, 8, strided=False) == list(range(64))
    assert stored_channels(64, 0, strided=False) == list(range(64))
    store = CompressedStore(1, 1, 64, torch.float16, "cpu", 32, nm_group=8, nm_strided=True)
    assert store.nm_strided and store.nm_group == 8 and store.word_quota and store.quotas == (16, 16)
    assert store.channel_order.device.type == "cpu" and store.channel_order.tolist() == ORDER_64_8
    assert CompressedStore(1, 1, 64, torch.float16, "cpu", 32, nm_group=8).channel_order is None
    assert not CompressedStore(1, 1, 64, torch.float16, "cpu", 32).nm_strided


def test_strided_validation_names_the_values():
    with pytest.raises(ValueError, match=r"nm_strided=True .* needs nm_group 4 or 8, got nm_group=0"):
        CompressedStore(1, 1, 64, torch.float16, "cpu", 32, nm_strided=True)
    with pytest.raises(
        ValueError, match="nm_group must be 0 \\(none\\), 4, 8 or 16 consecutive channels, got 2"
    ):
        CompressedStore(1, 1, 64, torch.float16, "cpu", 32, nm_group=2, nm_strided=True)
    with pytest.raises(ValueError, match=r"nm_strided=True .* needs nm_group 4 or 8, got nm_group=16"):
        CompressedStore(1, 1, 64, torch.float16, "cpu", 32, nm_group=16, nm_strided=True)
    for group in (2, 16):
        with pytest.raises(ValueError, match=f"got nm_group={group}, head_dim=64"):
            stored_channels(64, group, strided=True)
    with pytest.raises(ValueError, match="got nm_group=8, head_dim=60"):
        stored_channels(60, 8, strided=True)


@pytest.mark.parametrize("value_dtype", ["native", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group", [4, 8])
@pytest.mark.parametrize("pattern", ["random", "strided-groups"])
def test_reference_pack_layout_and_round_trip(value_dtype, dtype, group, pattern):
    """Any fixed-count mask (the reference pack does not check groups) or a strided N:M one: the stored bytes are
    the hand pack's and to_dense gives rows·mask back in channel order."""
    rows = _rows(dtype, 64, n=5)
    g = torch.Generator().manual_seed(group)
    score = torch.rand(rows.shape, generator=g) if pattern == "random" else rows.abs().float()
    mask = (
        topk_mask(score, 32) if pattern == "random" else hand_nm_mask(score, group // 2, group, strided=True)
    )
    store = _store(rows, 32, group, value_dtype=value_dtype)
    pack_into(store, rows, mask, "torch")
    _assert_hand_layout(store, rows, mask)
    want = rows.masked_fill(~mask, 0)
    assert torch.equal(store.to_dense(), fake_quantize(want) if value_dtype == "fp8" else want)
    if pattern == "strided-groups":
        store.check_word_counts()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim, group, keep", [(64, 8, 32), (64, 4, 16), (128, 4, 64), (128, 8, 80)])
def test_fused_topk_pack_equals_the_hand_pack(backend, dtype, head_dim, group, keep):
    """The fused top-k of each strided group (ties to the lower channel) over two appends, byte for byte."""
    rows = _rows(dtype, head_dim)
    store = _store(rows, keep, group)
    topk_pack_into(store, rows[:, :, :4], keep, backend)
    topk_pack_into(store, rows[:, :, 4:], keep, backend)
    mask = hand_nm_mask(rows.abs().float(), keep * group // head_dim, group, strided=True)
    _assert_hand_layout(store, rows, mask)
    assert torch.equal(store.to_dense(), rows.masked_fill(~mask, 0))
    store.check_word_counts()
    # the all-equal token (rows[0, 0, 0]) keeps the first members of every strided group: the lowest channels
    lowest = torch.arange(head_dim) // (head_dim // group) < keep * group // head_dim
    assert torch.equal(store.to_dense()[0, 0, 0] != 0, lowest)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_pack_into_an_fp8_strided_store(backend):
    rows = _rows(torch.float16, 64)
    store = _store(rows, 32, 8, value_dtype="fp8")
    topk_pack_into(store, rows, 32, backend)
    _assert_hand_layout(store, rows, hand_nm_mask(rows.abs().float(), 4, 8, strided=True))


@pytest.mark.parametrize("value_dtype", ["native", "fp8"])
def test_triton_given_mask_pack_equals_the_hand_pack(value_dtype):
    """The given-mask kernel reads the mask in the stored order too (a mask that is no group pattern)."""
    rows = _rows(torch.float16, 64, n=6)
    mask = topk_mask(torch.rand(rows.shape, generator=torch.Generator().manual_seed(1)), 32)
    store = _store(rows, 32, 4, value_dtype=value_dtype)
    pack_into(store, rows, mask, "triton")
    _assert_hand_layout(store, rows, mask)


def test_triton_strided_pack_at_per_row_device_counts():
    """A static store appends each batch row at its own device count (a padded static cache's rows); unpack_fixed
    returns channel order."""
    rows = _rows(torch.float16, 64, n=6, seed=5)
    store = _store(rows, 16, 4, capacity=12, static=True)
    topk_pack_into(store, rows[:, :, :4], 16, "triton")
    store.length_tensor.copy_(torch.tensor([4, 2], dtype=torch.int32))  # row 1 keeps only its first 2 tokens
    topk_pack_into(store, rows[:, :, 4:], 16, "triton")
    assert store.length_tensor.tolist() == [6, 4]
    store.check_word_counts()
    mask = hand_nm_mask(rows.abs().float(), 1, 4, strided=True)
    bits, vals, _ = hand_pack(rows, mask, 4, store.slot)
    assert torch.equal(store.bits[0, :, :6], bits[0]) and torch.equal(store.vals[0, :, :6], vals[0])
    assert torch.equal(store.bits[1, :, 2:4], bits[1, :, 4:6]) and torch.equal(
        store.vals[1, :, 2:4], vals[1, :, 4:6]
    )
    dense, ref = unpack_fixed(store), rows.masked_fill(~mask, 0)
    assert torch.equal(dense[0, :, :6], ref[0])
    assert torch.equal(dense[1, :, :2], ref[1, :, :2])
    assert torch.equal(dense[1, :, 2:4], ref[1, :, 4:6])


@pytest.mark.parametrize("value_dtype", ["native", "fp8"])
def test_static_one_token_pack_equals_the_hand_pack(value_dtype):
    """`pack_token_at` (the host-counted static caches' decode append) at per-row slots, its own top-k and a given
    mask, both in channel order."""
    rows = _rows(torch.float32, 64, n=4, seed=2)[:, :, 1:3]  # tokens with ties at their thresholds
    store = _store(rows, 32, 8, capacity=4, value_dtype=value_dtype)
    pack_token_at(store, rows[:, :, :1], 32, torch.tensor([0, 2]))
    given = topk_mask(torch.rand(2, 2, 1, 64, generator=torch.Generator().manual_seed(3)), 32)
    pack_token_at(store, rows[:, :, 1:], 32, torch.tensor([1, 3]), given)
    masks = (hand_nm_mask(rows[:, :, :1].abs(), 4, 8, strided=True), given)
    for i, (slots, mask) in enumerate(zip(([0, 2], [1, 3]), masks)):
        bits, vals, scales = hand_pack(rows[:, :, i : i + 1], mask, 8, store.slot, store.fp8)
        for b, t in enumerate(slots):
            assert torch.equal(store.bits[b, :, t], bits[b, :, 0])
            assert torch.equal(store.vals[b, :, t], vals[b, :, 0])
            if store.fp8:
                assert torch.equal(store.scales[b, :, t], scales[b, :, 0])
        want = rows[:, :, i : i + 1].masked_fill(~mask, 0)
        want = fake_quantize(want) if store.fp8 else want
        dense = unpack_fixed(store)
        assert torch.equal(dense[0, :, slots[0]], want[0, :, 0]) and torch.equal(
            dense[1, :, slots[1]], want[1, :, 0]
        )


def test_check_word_counts_checks_the_strided_groups():
    rows = _rows(torch.float32, 64)
    good = _store(rows, 32, 4)
    topk_pack_into(good, rows, 32, "torch")
    good.check_word_counts()
    # consecutive 2:4 groups: right counts per word of the stored order, wrong counts per strided group
    bad = _store(rows, 32, 4)
    pack_into(bad, rows, nm_topk_mask(rows.abs(), 32, 4), "torch")
    with pytest.raises(
        ValueError, match=r"entries per strided 4-channel group; the store's quotas are \[2, 2"
    ):
        bad.check_word_counts()
    # one token's bit moved within its word, to the next strided group: words still in quota, two groups not
    word = int(good.bits[1, 0, 3, 0])
    first = (word & -word).bit_length() - 1  # the lowest stored position kept in word 0
    free = next(p for p in range(first // 4 * 4 + 4, 32) if not word >> p & 1)
    good.bits[1, 0, 3, 0] = torch.tensor(word ^ (1 << first) ^ (1 << free), dtype=torch.int64).to(torch.int32)
    with pytest.raises(
        ValueError, match=r"row 1, head 0, token 3 keeps \[.*\] entries per strided 4-channel"
    ):
        good.check_word_counts()


def test_reference_decode_over_strided_stores_is_plain_attention():
    """K in strided 4:8 groups, V in strided 2:4 groups: softmax attention over rows·mask and the window."""
    b, hkv, hq, t, w, d = 2, 2, 4, 9, 3, 64
    g = torch.Generator().manual_seed(6)
    keys, values = torch.randn(b, hkv, t, d, generator=g), torch.randn(b, hkv, t, d, generator=g)
    k_win, v_win, q = (torch.randn(*s, generator=g) for s in ((b, hkv, w, d), (b, hkv, w, d), (b, hq, d)))
    ks, vs = _store(keys, 32, 8), _store(values, 32, 4)
    topk_pack_into(ks, keys, 32, "torch")
    topk_pack_into(vs, values, 32, "torch")
    k_all = torch.cat([keys * hand_nm_mask(keys.abs(), 4, 8, strided=True), k_win], dim=2)
    v_all = torch.cat([values * hand_nm_mask(values.abs(), 2, 4, strided=True), v_win], dim=2)
    k_rep, v_rep = k_all.repeat_interleave(hq // hkv, 1), v_all.repeat_interleave(hq // hkv, 1)
    scores = torch.einsum("bhd,bhtd->bht", q, k_rep) * 0.125
    want = torch.einsum("bht,bhtd->bhd", scores.softmax(-1), v_rep)
    got = decode_attention_reference(q, ks, vs, k_win, v_win, 0.125)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
