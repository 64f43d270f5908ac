"""The generated PTX prune+pack program (GPU fast path), run instruction by instruction in its numpy emulator on
the CPU, against the exact torch top-k (ties kept in channel order) and the fixed-layout packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mustafar.formats import pack_bitmap, padded_keep
from mustafar.kernels._topk_ptx import emulate
from mustafar.pruning.keep import topk_mask


def _rows(n, d, dtype, seed):
    """fp16/bf16 bit patterns: Gaussian rows plus rows made of a few repeated values (many ties), zero rows,
    arbitrary bit patterns (inf/NaN keys included: the key order is the integer order of bits & 0x7FFF)."""
    g = torch.Generator().manual_seed(seed)
    gauss = torch.randn(n, d, generator=g).to(dtype).view(torch.int16)
    pool = torch.tensor([0.0, 1.0, -1.0, 2.0, 1.0078125, -0.0, 2.0**-20], dtype=dtype).view(torch.int16)
    ties = pool[torch.randint(0, len(pool), (n, d), generator=g)]
    raw = torch.randint(-(2**15), 2**15, (n, d), generator=g, dtype=torch.int32).to(torch.int16)
    zeros = torch.zeros(n, d, dtype=torch.int16)
    return torch.cat([gauss, ties, raw, zeros]).numpy().view(np.uint16)


def _reference(bits16, keep, slot):
    keys = torch.from_numpy(
        bits16.astype(np.int32) & 0x7FFF
    ).float()  # |x| order == key order (exactly in fp32)
    mask = topk_mask(keys, keep)
    words = pack_bitmap(mask).numpy().view(np.uint32)
    vals = np.zeros((len(bits16), slot), np.uint16)
    for i in range(len(bits16)):
        v = bits16[i][mask[i].numpy()]
        vals[i, : len(v)] = v
    return words, vals


@pytest.mark.parametrize("coalesced", [True, False])
@pytest.mark.parametrize(
    "d,keep,dtype",
    [
        (128, 38, torch.float16),
        (128, 64, torch.bfloat16),
        (128, 1, torch.float16),
        (64, 19, torch.bfloat16),
        (64, 64, torch.float16),
    ],
)
def test_generated_ptx_matches_exact_topk(d, keep, dtype, coalesced):
    slot = padded_keep(keep, 2)
    bits16 = _rows(256, d, dtype, seed=keep + d)
    n_tok = len(bits16) - 7  # a partial last block: its rows are not written
    words, vals = emulate(bits16, keep, slot, n_tok=n_tok, warps=2, coalesced=coalesced)
    want_words, want_vals = _reference(bits16[:n_tok], keep, slot)
    assert np.array_equal(words[:n_tok], want_words)
    assert np.array_equal(vals[:n_tok], want_vals)
    assert not words[n_tok:].any() and not vals[n_tok:].any()
