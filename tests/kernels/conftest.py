"""Fixtures shared by the kernel tests (CPU under the Triton interpreter, and GPU)."""

import importlib
import math

import pytest
import torch


@pytest.fixture
def poison(monkeypatch):
    """Every scratch buffer of the decode launch and its output start as NaN (the cached split partials
    included)."""
    decode = importlib.import_module("mustafar.kernels.decode")
    monkeypatch.setattr(decode, "_PARTIALS", {})
    monkeypatch.setattr(
        decode, "_empty", lambda shape, dtype, device: torch.full(shape, math.nan, dtype=dtype, device=device)
    )
    monkeypatch.setattr(
        decode, "_output", lambda q: torch.full(q.shape, math.nan, dtype=q.dtype, device=q.device)
    )
