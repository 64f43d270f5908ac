"""What the kernels support and where they run: one definition of each (imported by the dispatcher, the kernels,
the benchmarks and :mod:`mustafar.models`)."""

from __future__ import annotations

import functools
import os
import warnings

import torch

HEAD_DIMS = (64, 128)  # head dims the Triton kernels are written for; the PyTorch references take any


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``) instead of compiling them."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def gluon_capable(device: torch.device) -> bool:
    """Whether the Gluon / inline-PTX kernels can run on ``device``: a CUDA GPU of compute capability 8.0 or newer
    (``cp.async``, ``mma.sync`` m16n8k16), compiled rather than interpreted (Gluon has no interpreter)."""
    return device.type == "cuda" and not interpreting() and _capability(device.index) >= (8, 0)


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def fp8_convert_capable(device: torch.device) -> bool:
    """Whether the scatter decoder's ``cvt.rn.f16x2.e4m3x2`` (fp8 codes to fp16 in registers) exists on
    ``device``: compute capability 8.9 or newer (Ada, Hopper)."""
    return gluon_capable(device) and _capability(device.index) >= (8, 9)


def pdl_capable(device: torch.device) -> bool:
    """Whether a kernel can follow the previous one on ``device`` as a programmatic dependent launch
    (``griddepcontrol``): compute capability 9.0 or newer (Hopper), compiled kernels."""
    return gluon_capable(device) and _capability(device.index) >= (9, 0)


_WARNED: set[str] = set()


def warn_once(message: str, category: type[Warning], stacklevel: int = 2) -> None:
    """``warnings.warn`` once per distinct message per process: fallbacks and hints are announced, not repeated per
    call. ``stacklevel`` as for ``warnings.warn``, counted from the caller."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, category, stacklevel=stacklevel + 1)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of Python ints. Triton's ``cdiv`` and ``next_power_of_2`` are constexpr functions that cost ~2 µs
    per call from the host (the split plan's wave model called them ~1,500 times per new length: 1.2 ms at 16K)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (0 for 0), as ``triton.next_power_of_2`` gives it, in Python ints."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
