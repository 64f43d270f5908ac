"""FP8 kept values (``kv.value_dtype=fp8``): e4m3 codes with one power-of-two scale per token (per token-head).

A token's kept values ``x`` are stored as ``codes = fp8_e4m3(x / s)`` (round to nearest even) with
``s = 2^k`` the smallest power of two such that ``max|x| / s <= 448`` (e4m3's largest finite value; ``s = 1`` for
an all-zero token). A power of two makes the division exact, so every implementation (this reference, the
Triton pack, mask mode's simulated rounding) produces the same codes, and ``codes · s`` is exactly representable
in fp16 and bf16 (3 mantissa bits, exponent shifted): dequantising is exact in any of the model dtypes and the
kernels may apply ``s`` anywhere in their fp32 math (a K score or a P·V weight). Relative error per entry is at
most 2^-4 (half an e4m3 ulp) for entries of at least ``2^-6 · s`` (e4m3's smallest normal); below that they fall
to e4m3's subnormals, multiples of ``2^-9 · s``.

Non-finite kept values (the Triton pack does the same, bit for bit):

* ``max|x|`` runs over the token's *finite* kept values only, so a kept ±inf never moves the scale: the token
  ``[inf, 2, -1, 0.5]`` gets ``s = 2^-7`` (from 2) and codes ``0x7f, 0x78, 0xf0, 0x68``.
* ±inf is stored as e4m3fn's NaN code with inf's sign (``0x7f``, ``0xff`` for -inf) and so dequantises to NaN.
  e4m3fn has no inf; ``torch``'s own ``float8_e4m3fn`` conversion saturates inf to ±448 (``0x7e``/``0xfe``), which
  would dequantise to the finite ``±448·s`` and silently turn an overflow into an ordinary large value, so the
  store deliberately departs from torch here: a non-finite input stays non-finite (NaN) after the round trip.
* A finite value near the top of the model's dtype may round up past it (fp16 65504 is 255.875 · 2^8 and rounds
  to the code 256, which times 2^8 is 65536, inf in fp16); such a code takes the next smaller one (240 · 2^8 =
  61440), still within 2^-4 of the value, so dequantising never turns a finite value into inf. This happens only
  at the dtype's top scale (2^8 for fp16, 2^120 for bf16 and fp32), for codes above 240.
* A kept NaN is the NaN code with its sign (``0x7f``/``0xff``, as torch converts it), and a token holding one keeps
  ``s = 1``; its other kept values are then encoded at scale 1 and, beyond e4m3's range, saturate to ±448 (as
  torch's conversion does; the division never overflows otherwise).
"""

from __future__ import annotations

import torch
from torch import Tensor

FP8_ALIGN = 8  # bytes a token's fp8 value slot is padded to (an 8-byte cp.async chunk)
SCALE_BYTES = 4  # one fp32 scale per token-head


def pow2_scale(amax: Tensor) -> Tensor:
    """fp32 ``2^k``, the smallest power of two with ``amax / 2^k <= 448`` (1 where ``amax`` is 0).

    Integer arithmetic on the fp32 bits: ``amax = m·2^e`` with ``m`` in [1, 2) needs ``k = e - 8`` when
    ``m <= 1.75`` (448 = 1.75·2^8) and ``k = e - 7`` otherwise (the Triton pack computes the same). ``amax`` is
    meant finite (:func:`quantize` passes the largest finite kept magnitude)."""
    a = amax.float()
    bits = a.view(torch.int32)
    exp = ((bits >> 23) & 0xFF) - 127
    k = exp - 8 + ((bits & 0x7FFFFF) > 0x600000).to(torch.int32)
    k = torch.where(a > 0, k, torch.zeros_like(k)).clamp(-126, 127)
    return ((k + 127) << 23).view(torch.float32)


def quantize(x: Tensor, kept: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-token e4m3 codes (uint8 bit patterns, same shape as ``x`` [..., D]) and fp32 scales [...]; the scale
    covers the finite ``kept`` entries (default: all; pruned entries are zeros and do not move the maximum). A
    kept NaN makes its token's scale 1; ±inf and NaN are the NaN code with their sign (module docstring). A code
    whose value times the scale would pass ``x``'s dtype's largest finite value takes the next smaller one."""
    xf = x.float()
    finite, nan = xf.isfinite(), xf.isnan()
    inside, nan = (finite, nan) if kept is None else (finite & kept, nan & kept)
    scale = pow2_scale(xf.abs().masked_fill(~inside, 0).amax(-1))
    scale = torch.where(nan.any(-1), torch.ones_like(scale), scale)
    codes = (xf / scale.unsqueeze(-1)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    over = (codes.float() * scale.unsqueeze(-1)).abs() > torch.finfo(x.dtype).max  # rounded past the dtype
    codes = codes.view(torch.uint8) - over.to(torch.uint8)  # one code down: the next smaller magnitude
    nan_code = torch.where(xf.signbit(), 0xFF, 0x7F).to(torch.uint8)
    return torch.where(finite, codes, nan_code), scale


def top_exponent(dtype: torch.dtype) -> int:
    """log2 of the scale of ``dtype``'s largest finite values: the one scale at which a rounded code can pass the
    dtype's range (codes above 240 there; :func:`quantize` takes them one down)."""
    return int(pow2_scale(torch.tensor(torch.finfo(dtype).max)).log2())


def dequantize(codes: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``codes`` (uint8 e4m3 bit patterns [..., n]) times their token's ``scale`` [...] in ``dtype`` (exact)."""
    return (codes.view(torch.float8_e4m3fn).float() * scale.unsqueeze(-1)).to(dtype)


def fake_quantize(x: Tensor) -> Tensor:
    """``x`` [..., D] (pruned entries already zero) as the fp8 store would return it: mask mode's rounding."""
    codes, scale = quantize(x)
    return dequantize(codes, scale, x.dtype)
