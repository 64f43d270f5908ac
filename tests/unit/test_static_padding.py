"""Left padding in the static compressed cache: the column shifts that keep pads out of the stores, the per-row
pack slot, and each padded row's stored cache against the same prompt run alone (fp32, CPU, PyTorch backend)."""

from __future__ import annotations

import torch

from mustafar.config import KVConfig
from mustafar.formats import CompressedStore
from mustafar.generation import generate
from mustafar.kernels import topk_pack_into
from mustafar.runner_pool import release
from mustafar.static_cache import column_align, left_align, pack_token_at, static_cache, unpack_fixed


def test_left_align_and_back_by_hand():
    x = torch.arange(10.0).view(2, 1, 5, 1)  # rows [0..4] and [5..9]; row 1 has 2 pad columns
    pads = torch.tensor([0, 2])
    aligned = left_align(x, pads)
    assert aligned.view(2, 5).tolist() == [[0, 1, 2, 3, 4], [7, 8, 9, 9, 9]]  # tail: past the row's count
    assert column_align(aligned, pads).view(2, 5).tolist() == [[0, 1, 2, 3, 4], [0, 0, 7, 8, 9]]


def test_pack_token_at_writes_each_row_at_its_own_slot():
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(3, 2, 1, 64, generator=g)
    store = CompressedStore(3, 2, 64, torch.float32, "cpu", keep=20, capacity=6)
    pack_token_at(store, rows, 20, torch.tensor([4, 0, 2]))
    dense = unpack_fixed(store)
    for b, slot in enumerate((4, 0, 2)):
        ref = CompressedStore(1, 2, 64, torch.float32, "cpu", keep=20)
        topk_pack_into(ref, rows[b : b + 1], 20, "torch")
        torch.testing.assert_close(dense[b, :, slot], ref.to_dense()[0, :, 0], atol=0, rtol=0)
        assert dense[b].abs().sum() == dense[b, :, slot].abs().sum()  # nothing written at another slot


def test_padded_rows_store_what_each_row_alone_stores(tiny_llama):
    """After prefill and 5 greedy steps every layer's logical cache of a padded row equals its run alone, with
    zeros in its pad columns: pads never reach the stores, and each row's store count is its own."""
    release(tiny_llama)
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.7, window=8, mode="compressed")
    g = torch.Generator().manual_seed(2)
    ps = [torch.randint(1, 256, (n,), generator=g).tolist() for n in (13, 30)]
    cache = static_cache(tiny_llama, policy, 30, 5, padded=True, shortest=13)
    generate(tiny_llama, policy, ps, 5, cache=cache)
    for b, p in enumerate(ps):
        alone = static_cache(tiny_llama, policy, len(p), 5)
        generate(tiny_llama, policy, [p], 5, cache=alone)
        pad = 30 - len(p)
        for layer, solo in zip(cache.layers, alone.layers, strict=True):
            assert int(layer.stored[b]) == int(solo.stored[0]) == len(p) + 4 - 8
            for got, ref in zip(layer.dense_view(), solo.dense_view(), strict=True):
                assert not got[b, :, :pad].any()
                torch.testing.assert_close(got[b, :, pad:], ref[0], atol=1e-5, rtol=1e-5)
