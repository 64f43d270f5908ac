"""A Gluon probe (GPU only): a tile stored through a shared layout, read back byte-linearly."""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from mustafar.kernels.decode_scatter import _vt8_tile_layout, _vt_tile_layout


@gluon.jit
def _read_back(out_ptr, N: gl.constexpr):
    """Copy the first ``N`` 16-bit elements of shared memory, in address order, to ``out_ptr``."""
    k = gl.arange(0, N, layout=gl.BlockedLayout([1], [32], [1], [0]))
    raw = gl.inline_asm_elementwise(
        "{ .reg .b32 a; mov.u32 a, global_smem; add.u32 a, a, $1; ld.shared.b16 $0, [a]; }",
        "=h,r",
        [k * 2],
        dtype=gl.int16,
        is_pure=False,
        pack=1,
    )
    gl.store(out_ptr + k, raw)


@gluon.jit
def _store_and_read(out_ptr, D: gl.constexpr):
    R: gl.constexpr = 2 * D
    C: gl.constexpr = 16
    lay: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // C, C // 8], [1, 1], [1, 0])
    i = gl.expand_dims(gl.arange(0, R, layout=gl.SliceLayout(1, lay)), 1)
    j = gl.expand_dims(gl.arange(0, C, layout=gl.SliceLayout(0, lay)), 0)
    idx = (((i // D) * C + j) * D + i % D).to(gl.int16)  # token (i div D)·16 + j, channel i mod D
    sm = gl.allocate_shared_memory(gl.int16, [R, C], _vt_tile_layout(D))
    sm.store(idx)
    gl.thread_barrier()
    _read_back(out_ptr, R * C)
    sm._keep_alive()


def read_vt_tile(d: int) -> list[int]:
    """The scatter decoder's dense Vᵀ tile (its layout, seen as [2d, 16]: tokens 0-15 above 16-31) holding token
    r's channel c as the number r·d + c, in shared-memory order."""
    out = torch.zeros(32 * d, dtype=torch.int16, device="cuda")
    _store_and_read[(1,)](out, d, num_warps=1)
    return out.tolist()


@gluon.jit
def _store_and_read8(out_ptr, D: gl.constexpr):
    lay: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [1, 1], [1, 0])
    c = gl.expand_dims(gl.arange(0, D, layout=gl.SliceLayout(1, lay)), 1)
    r = gl.expand_dims(gl.arange(0, 32, layout=gl.SliceLayout(0, lay)), 0)
    # 16-bit numbers through the e4m3 tile's layout: its offsets count elements, so the element order is the one
    # the PTX's byte stores follow
    sm = gl.allocate_shared_memory(gl.int16, [D, 32], _vt8_tile_layout(D))
    sm.store((r * D + c).to(gl.int16))
    gl.thread_barrier()
    _read_back(out_ptr, 32 * D)
    sm._keep_alive()


def read_vt8_tile(d: int) -> list[int]:
    """The e4m3 tile's element order (fp8 stores): token r's channel c as the number r·d + c, element by element."""
    out = torch.zeros(32 * d, dtype=torch.int16, device="cuda")
    _store_and_read8[(1,)](out, d, num_warps=1)
    return out.tolist()
