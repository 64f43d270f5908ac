"""scripts/scatter_banks.py: the bank model on hand-worked stores, and its round-12/13 layouts are the kernel's."""

from __future__ import annotations

from tests.kernels.test_scatter_ptx import tile8_offset, tile_offset
from tests.unit.script_module import load_script


def test_store_wavefronts_hand_worked():
    banks = load_script("scatter_banks")
    assert banks.store_wavefronts([0] * 32) == 1  # one word
    assert banks.store_wavefronts([2 * r for r in range(32)]) == 1  # 16 words on 16 banks, two halves each
    assert banks.store_wavefronts([128 * r for r in range(32)]) == 32  # 32 words on bank 0
    # rounds 7-10's tile, every lane at channel 0: words 64r + 4·(r mod 8) -> 8 banks with 4 words each
    assert banks.store_wavefronts([banks.row_major_swizzled(r, 0, 128) for r in range(32)]) == 4


def test_layouts_are_permutations_and_round_12_is_the_kernels():
    banks = load_script("scatter_banks")
    for d in (64, 128):
        for layout in banks.LAYOUTS.values():
            offsets = {layout(r, c, d) for r in range(32) for c in range(d)}
            step = 1 if layout is banks.e4m3_token_blocks else 2
            assert offsets == set(range(0, 32 * d * step, step))
        assert all(banks.token_blocks(r, c, d) == tile_offset(r, c, d) for r in range(32) for c in range(d))
        assert all(
            banks.e4m3_token_blocks(r, c, d) == tile8_offset(r, c, d) for r in range(32) for c in range(d)
        )
