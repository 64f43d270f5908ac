"""Audit of the compressed format on CPU against an independent plain-Python model of docs/formats.md (bit order,
packed value order, slots and bytes, word and N:M quotas, strided orders, fp8 codes and scales, the decode
reference against fp64 softmax attention), and the bad inputs that used to fail late, opaquely or not at all."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mustafar.formats import (
    CompressedStore,
    fixed_token_nbytes,
    pack_bitmap,
    stored_channels,
    unpack_bitmap,
)
from mustafar.kernels import pack_into, sparse_decode_attention, topk_pack_into

# ------------------------------------------------------------------ the independent model (no mustafar code)


def _words(mask: list[bool]) -> list[int]:
    """LSB first, int32 two's complement: channel c is bit c % 32 of word c // 32."""
    out = []
    for g in range(len(mask) // 32):
        w = sum(1 << j for j in range(32) if mask[32 * g + j])
        out.append(w - 2**32 if w >= 2**31 else w)
    return out


def _top(vals: list[float], k: int) -> list[int]:
    """Positions of the k largest |v|, ties to the lower position."""
    return sorted(sorted(range(len(vals)), key=lambda i: (-abs(vals[i]), i))[:k])


def _kept(vals: list[float], keep: int, word: bool, group: int) -> list[bool]:
    d, m = len(vals), [False] * len(vals)
    if group:
        spans = [(s, s + group, keep * group // d) for s in range(0, d, group)]
    elif word:
        w = d // 32
        spans = [(32 * g, 32 * g + 32, keep // w + (g < keep % w)) for g in range(w)]
    else:
        spans = [(0, d, keep)]
    for lo, hi, k in spans:
        for i in _top(vals[lo:hi], k):
            m[lo + i] = True
    return m


def _e4m3(code: int) -> float:
    s, e, m = -1.0 if code & 0x80 else 1.0, (code >> 3) & 0xF, code & 7
    return s * m * 2.0**-9 if e == 0 else s * (1 + m / 8) * 2.0 ** (e - 7)


def _encode(y: float) -> int:
    """Round to nearest even over the finite e4m3 grid (|y| <= 448), the sign kept."""
    best = min(range(0x7F), key=lambda c: (abs(_e4m3(c) - abs(y)), c % 2))
    return (0x80 if math.copysign(1.0, y) < 0 else 0) | best


def _scale(amax: float) -> float:
    k = -126
    while amax / 2.0**k > 448:
        k += 1
    return 1.0 if amax == 0 else 2.0**k


def _rows(b, h, n, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, n, d, generator=g)
    x = torch.where(torch.rand(b, h, n, d, generator=g) < 0.3, torch.round(x * 2) / 2, x)  # many ties
    x[0, 0, 0] = 0.0  # an all-zero token
    x[-1, -1, -1] = 0.25  # all ties
    return x.to(dtype)


CASES = [  # head_dim, dtype, keep, word, nm_group, strided, fp8
    (32, torch.float16, 1, False, 0, False, False),
    (64, torch.bfloat16, 19, True, 0, False, False),
    (96, torch.float32, 48, False, 8, True, False),
    (96, torch.float16, 30, False, 16, False, True),
    (128, torch.float16, 38, True, 0, False, True),
    (256, torch.bfloat16, 64, False, 4, True, True),
]


@pytest.mark.parametrize("d,dtype,keep,word,group,strided,fp8", CASES)
def test_topk_pack_matches_an_independent_model_of_the_format(d, dtype, keep, word, group, strided, fp8):
    b, h, n = 2, 2, 5
    store = CompressedStore(
        b, h, d, dtype, "cpu", keep, word_quota=word, nm_group=group, nm_strided=strided,
        value_dtype="fp8" if fp8 else "native",
    )  # fmt: skip
    x = _rows(b, h, n, d, dtype, seed=d + keep)
    x_nc = torch.empty(b, h, d, n, dtype=dtype).transpose(-1, -2)  # non-contiguous rows
    x_nc.copy_(x)
    topk_pack_into(store, x_nc[:, :, :2], keep, backend="torch")
    topk_pack_into(store, x_nc[:, :, 2:], keep, backend="torch")
    order = stored_channels(d, group, strided)
    itemsize = torch.empty((), dtype=dtype).element_size()
    slot = -(-keep // 8) * 8 if fp8 else -(-keep // (16 // itemsize)) * (16 // itemsize)
    dense = store.to_dense()
    for bi in range(b):
        for hi in range(h):
            for t in range(n):
                row = x[bi, hi, t].float().tolist()
                stored = [row[order[p]] for p in range(d)]
                mask = _kept(stored, keep, word, group)
                assert store.bits[bi, hi, t].tolist() == _words(mask)
                kept = [v for v, m in zip(stored, mask) if m]
                if fp8:
                    s = _scale(max(abs(v) for v in kept))
                    assert float(store.scales[bi, hi, t]) == s
                    codes = [_encode(v / s) for v in kept]
                    assert store.vals[bi, hi, t].tolist() == codes + [0] * (slot - keep)
                    kept = [_e4m3(c) * s for c in codes]
                else:
                    assert store.vals[bi, hi, t].float().tolist() == kept + [0.0] * (slot - keep)
                want = [0.0] * d
                for p, v in zip([p for p in range(d) if mask[p]], kept):
                    want[order[p]] = v
                assert dense[bi, hi, t].float().tolist() == want
    token = d // 8 + (slot + 4 if fp8 else slot * itemsize)
    assert store.token_nbytes == token == fixed_token_nbytes(d, keep, itemsize, "fp8" if fp8 else "native")
    assert store.payload_nbytes == b * h * n * token
    per_slot_bytes = d // 8 + (slot + 4 if fp8 else slot * itemsize)
    assert store.nbytes == b * h * store.capacity * per_slot_bytes
    assert store.dense_nbytes == b * h * n * d * itemsize


def test_variable_layout_offsets_and_bytes_match_the_model():
    b, h, d = 2, 3, 64
    store = CompressedStore(b, h, d, torch.float16, "cpu", None)
    g = torch.Generator().manual_seed(0)
    chunks = []
    for n in (0, 4, 1, 5):
        x = _rows(b, h, n, d, torch.float16, seed=n) if n else torch.zeros(b, h, 0, d, dtype=torch.float16)
        mask = torch.rand(b, h, n, d, generator=g) < 0.4
        if n:
            mask[0, 0, 0] = False  # a token keeping nothing
        pack_into(store, x, mask, backend="torch")
        chunks.append((x, mask))
    x = torch.cat([c[0] for c in chunks], 2)
    mask = torch.cat([c[1] for c in chunks], 2)
    for bi in range(b):
        for hi in range(h):
            off = 0
            for t in range(x.shape[2]):
                assert int(store.offs[bi, hi, t]) == off
                kept = x[bi, hi, t][mask[bi, hi, t]]
                assert torch.equal(store.vals[bi, hi, off : off + kept.numel()], kept)
                off += kept.numel()
            assert int(store.row_nnz[bi, hi]) == off
    nnz = int(mask.sum())
    assert store.payload_nbytes == b * h * x.shape[2] * (d // 8 + 4) + 2 * nnz
    assert store.nbytes == b * h * store.capacity * (d // 8 + 4) + 2 * store.vals.shape[2] * b * h + 8 * b * h
    assert torch.equal(store.to_dense(), x * mask)


def _attention64(q, keys, values, scale, counts=None, stored=0):
    b, hq, d = q.shape
    rep = hq // keys.shape[1]
    out = torch.empty(b, hq, d, dtype=torch.float64)
    for bi in range(b):
        idx = [i for i in range(keys.shape[2]) if counts is None or i >= stored or i < counts[bi]]
        for hi in range(hq):
            p = torch.softmax(keys[bi, hi // rep, idx] @ q[bi, hi].double() * scale, 0)
            out[bi, hi] = p @ values[bi, hi // rep, idx]
    return out


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2), (torch.float32, 1e-5)]
)
@pytest.mark.parametrize("d", [32, 96, 256])
def test_decode_reference_is_softmax_attention_over_to_dense_plus_window(dtype, tol, d):
    b, hkv, rep, t, w = 2, 2, 3, 6, 3
    g = torch.Generator().manual_seed(d)
    ks = CompressedStore(b, hkv, d, dtype, "cpu", d // 2, value_dtype="fp8")
    vs = CompressedStore(b, hkv, d, dtype, "cpu", None)
    topk_pack_into(ks, torch.randn(b, hkv, t, d, generator=g).to(dtype), d // 2, backend="torch")
    v = torch.randn(b, hkv, t, d, generator=g).to(dtype)
    pack_into(vs, v, torch.rand(b, hkv, t, d, generator=g) < 0.3, backend="torch")
    q = torch.randn(b, d, hkv * rep, generator=g).to(dtype).transpose(1, 2)  # non-contiguous q
    kw, vw = (torch.randn(b, hkv, w, d, generator=g).to(dtype) for _ in "kv")
    out = sparse_decode_attention(q, ks, vs, kw, vw, d**-0.5, backend="torch")
    keys = torch.cat([ks.to_dense(), kw], 2).double()
    values = torch.cat([vs.to_dense(), vw], 2).double()
    assert out.dtype == dtype
    assert (out.double() - _attention64(q, keys, values, d**-0.5)).abs().max() <= tol


def test_static_decode_reference_reads_each_rows_own_count():
    b, h, d, cap = 2, 2, 64, 5
    ks, vs = (CompressedStore(b, h, d, torch.float16, "cpu", 32, capacity=cap, static=True) for _ in "kv")
    x = torch.randn(b, h, 6, d).half()
    topk_pack_into(ks, x[:, :, :3], 32, backend="torch")
    topk_pack_into(ks, x[:, :, 3:5], 32, backend="torch")  # exactly to the capacity
    with pytest.raises(ValueError, match="capacity 5 holds 5 tokens, cannot take 1 more"):
        topk_pack_into(ks, x[:, :, 5:], 32, backend="torch")
    topk_pack_into(vs, x[:, :, :5] * 2, 32, backend="torch")
    keys, values = ks.to_dense(), vs.to_dense()
    ks.length_tensor.copy_(torch.tensor([2, 5], dtype=torch.int32))
    vs.length_tensor.copy_(torch.tensor([3, 4], dtype=torch.int32))  # the kernels read the smaller count
    q, kw, vw = torch.randn(b, 4, d).half(), torch.randn(b, h, 2, d).half(), torch.randn(b, h, 2, d).half()
    out = sparse_decode_attention(q, ks, vs, kw, vw, 0.125, backend="torch")
    ref = _attention64(
        q, torch.cat([keys, kw], 2).double(), torch.cat([values, vw], 2).double(), 0.125, [2, 4], cap
    )
    assert (out.double() - ref).abs().max() <= 2e-3


# ------------------------------------------------------------------ the bugs: bad inputs


@pytest.mark.parametrize("keep", [5, None])
def test_append_packed_with_the_wrong_value_count_raises_and_leaves_the_store_as_it_was(keep):
    """It used to claim the token (length and, variable layout, row_nnz advanced, bits written) and then fail with
    torch's broadcast RuntimeError while writing the values: the store kept an empty token."""
    store = CompressedStore(1, 1, 32, torch.float16, "cpu", keep)
    bits = torch.full((1, 1, 1, 1), 0b11111, dtype=torch.int32)
    store.append_packed(bits, torch.arange(1, 6, dtype=torch.float16))
    before = store.to_dense().clone()
    for n in (4, 6):
        with pytest.raises(ValueError, match=f"values hold {n} entries, the bitmaps keep 5"):
            store.append_packed(bits, torch.zeros(n, dtype=torch.float16))
    assert store.length == 1
    assert torch.equal(store.to_dense(), before)
    if keep is None:
        assert int(store.row_nnz.sum()) == 5


def test_append_packed_fp8_with_the_wrong_code_count_raises_before_claiming():
    store = CompressedStore(1, 1, 32, torch.float16, "cpu", 3, value_dtype="fp8")
    with pytest.raises(ValueError, match="values hold 4 entries, the bitmaps keep 3"):
        store.append_packed(
            torch.full((1, 1, 1, 1), 7, dtype=torch.int32),
            torch.zeros(4, dtype=torch.uint8),
            torch.ones(1, 1, 1),
        )
    assert store.length == 0


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(keep=3.5), "keep"),
        (dict(keep=32.0), "keep"),
        (dict(keep=True), "keep"),
        (dict(head_dim=64.0), "head_dim"),
        (dict(batch=1.5), "batch"),
        (dict(heads="2"), "heads"),
        (dict(capacity=2.5), "capacity"),
        (dict(capacity=None), "capacity"),
    ],
)
def test_store_sizes_must_be_integers(kwargs, name):
    """Floats used to reach torch.zeros (a TypeError about 'size'), and keep=True made a store keeping 1."""
    args = dict(batch=1, heads=1, head_dim=64, dtype=torch.float16, device="cpu", keep=32) | kwargs
    with pytest.raises(ValueError, match=f"{name} must be an integer, got {kwargs[name]!r}"):
        CompressedStore(**args)


def test_store_sizes_take_numpy_and_tensor_integers_as_ints():
    store = CompressedStore(np.int64(1), 1, torch.tensor(64), torch.float16, "cpu", np.int32(32), capacity=4)
    assert type(store.keep) is int and store.keep == 32 and store.head_dim == 64 and store.capacity == 4


def test_length_must_be_an_integer():
    store = CompressedStore(1, 1, 64, torch.float16, "cpu", 32, capacity=4)
    with pytest.raises(ValueError, match="length must be an integer, got 1.5"):
        store.length = 1.5
    assert store.length == 0


def test_bitmap_helpers_refuse_what_they_would_mispack():
    """A non-bool mask was packed by its integer value (2 set bit 1 of the next channel's weight, 0.5 nothing) and
    a width that is not a multiple of 32, or a head_dim that does not match the words, failed in a reshape."""
    for mask in (torch.full((1, 32), 2), torch.full((1, 32), 0.5), torch.ones(2, 48, dtype=torch.bool)):
        with pytest.raises(ValueError, match="mask must be bool"):
            pack_bitmap(mask)
    with pytest.raises(ValueError, match="head_dim=96"):
        unpack_bitmap(torch.zeros(2, 2, dtype=torch.int32), 96)
    with pytest.raises(ValueError, match="words must be int32"):
        unpack_bitmap(torch.zeros(1, 1, dtype=torch.int64), 32)
    with pytest.raises(ValueError, match="value_dtype must be one of"):
        fixed_token_nbytes(64, 32, 2, "fp4")
