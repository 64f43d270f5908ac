"""A Gluon probe (GPU only): a tile stored through a shared layout, read back byte-linearly."""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def _store_and_read(out_ptr, R: gl.constexpr, C: gl.constexpr):
    lay: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // C, C // 8], [1, 1], [1, 0])
    r = gl.arange(0, R, layout=gl.SliceLayout(1, lay))
    c = gl.arange(0, C, layout=gl.SliceLayout(0, lay))
    idx = (gl.expand_dims(r, 1) * C + gl.expand_dims(c, 0)).to(gl.int16)
    sm = gl.allocate_shared_memory(gl.int16, [R, C], gl.SwizzledSharedLayout(8, 1, 8, [1, 0]))
    sm.store(idx)
    gl.thread_barrier()
    k = gl.arange(0, R * C, layout=gl.BlockedLayout([1], [32], [1], [0]))
    raw = gl.inline_asm_elementwise(
        "{ .reg .b32 a; mov.u32 a, global_smem; add.u32 a, a, $1; ld.shared.b16 $0, [a]; }",
        "=h,r",
        [k * 2],
        dtype=gl.int16,
        is_pure=False,
        pack=1,
    )
    gl.store(out_ptr + k, raw)
    sm._keep_alive()


def read_swizzled_tile(rows: int, cols: int) -> list[int]:
    """Element numbers r·cols + c stored through SwizzledSharedLayout(8, 1, 8, [1, 0]), in shared-memory order."""
    out = torch.zeros(rows * cols, dtype=torch.int16, device="cuda")
    _store_and_read[(1,)](out, rows, cols, num_warps=1)
    return out.tolist()
