"""Per-token bitmap layouts for a pruned K or V cache, their byte accounting, and the appendable store.

Every token of every (batch, KV head) row stores a D-bit bitmap of the kept channels (``D // 32`` int32 words,
LSB first: channel ``c`` is bit ``c % 32`` of word ``c // 32``, i.e. bit ``c % 8`` of byte ``c // 8``) plus its
kept values in channel order. Two layouts:

* **fixed** (``keep=int``): every token keeps exactly ``keep`` values, stored in a slot of
  ``padded_keep(keep, itemsize)`` values (``keep`` rounded up to a 16-byte multiple, zero-filled), so token ``t``
  lives at ``vals[b, h, t, :]``: O(1) addressing, no offsets, every slot 16-byte aligned.
* **variable** (``keep=None``): arbitrary patterns. Values of one (batch, head) row are packed back to back in
  ``vals[b, h, :]`` and an int32 ``offs[b, h, t]`` gives where token ``t`` starts.

Bytes per token per (batch, head), closed form (see :func:`fixed_token_nbytes`, :func:`variable_token_nbytes`):
fixed ``4·D/32 + padded_keep·itemsize``; variable ``4·D/32 + 4 + nnz·itemsize``. For D = 128 fp16 the fixed layout
needs 96 B at keep 38 (s = 0.7) and 144 B at keep 64 (s = 0.5), against 256 B dense.
"""

from __future__ import annotations

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_ALIGN_BYTES = 16


def keep_count(head_dim: int, sparsity: float) -> int:
    """Values kept per token by the framework's default rule: exactly round((1 - s) * D)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return max(1, round((1.0 - sparsity) * head_dim))


def padded_keep(keep: int, itemsize: int) -> int:
    """Value slots per token in the fixed layout: ``keep`` rounded up to a 16-byte multiple."""
    per_line = _ALIGN_BYTES // itemsize
    return -(-keep // per_line) * per_line


def bitmap_words(head_dim: int) -> int:
    return head_dim // 32


def fixed_token_nbytes(head_dim: int, keep: int, itemsize: int) -> int:
    """Bytes one token of one (batch, head) row takes in the fixed layout."""
    return 4 * bitmap_words(head_dim) + padded_keep(keep, itemsize) * itemsize


def variable_token_nbytes(head_dim: int, nnz: int, itemsize: int) -> int:
    """Bytes one token with ``nnz`` kept values takes in the variable layout (bitmap + int32 offset + values)."""
    return 4 * bitmap_words(head_dim) + 4 + nnz * itemsize


def reference_keep_mask(x_abs: Tensor, sparsity: float) -> Tensor:
    """The published code's magnitude rule along the last dim.

    threshold = k-th smallest |x| with k = int(s·D); keep every entry >= threshold (D - k + 1 entries plus ties).
    At s = 0 everything is kept.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    k = int(sparsity * x_abs.shape[-1])
    if k == 0:
        return torch.ones_like(x_abs, dtype=torch.bool)
    threshold = x_abs.kthvalue(k, dim=-1, keepdim=True).values
    return x_abs >= threshold


def topk_keep_mask(x: Tensor, keep: int) -> Tensor:
    """Strict per-token top-``keep`` by |x| along the last dim, ties broken by lower channel index first."""
    d = x.shape[-1]
    if not 0 < keep <= d:
        raise ValueError(f"keep must be in [1, {d}], got {keep}")
    order = torch.sort(x.abs(), dim=-1, descending=True, stable=True).indices[..., :keep]
    mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    return mask.scatter_(-1, order, True)


def pack_bitmap(mask: Tensor) -> Tensor:
    """bool [..., D] -> int32 [..., D // 32], LSB first."""
    d = mask.shape[-1]
    weights = torch.ones(32, dtype=torch.int64, device=mask.device) << torch.arange(32, device=mask.device)
    words = (mask.reshape(*mask.shape[:-1], d // 32, 32).to(torch.int64) * weights).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_bitmap(words: Tensor, head_dim: int) -> Tensor:
    """int32 [..., D // 32] -> bool [..., D]."""
    shifts = torch.arange(32, device=words.device, dtype=torch.int32)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:-1], head_dim).bool()


def _check_rows(rows: Tensor, batch: int, heads: int, head_dim: int, dtype: torch.dtype) -> None:
    if rows.dim() != 4 or rows.shape[0] != batch or rows.shape[1] != heads or rows.shape[3] != head_dim:
        raise ValueError(f"rows must have shape [{batch}, {heads}, n, {head_dim}], got {tuple(rows.shape)}")
    if rows.dtype != dtype:
        raise ValueError(f"rows dtype {rows.dtype} does not match the store dtype {dtype}")


class CompressedStore:
    """Appendable compressed rows (K or V) of shape [B, H_kv, T, D]; per-token bitmap layout.

    ``keep=int`` selects the fixed-nnz layout, ``keep=None`` the variable layout (module docstring). Buffers grow
    by doubling, so appending is amortised O(n). Buffers (read by the kernels): ``bits`` int32 [B, H, cap, D/32];
    fixed: ``vals`` [B, H, cap, padded_keep]; variable: ``vals`` [B, H, val_cap], ``offs`` int32 [B, H, cap].
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device,
        keep: int | None,
        capacity: int = 0,
    ) -> None:
        if head_dim <= 0 or head_dim % 32:
            raise ValueError(f"head_dim must be a positive multiple of 32, got {head_dim}")
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}")
        if keep is not None and not 0 < keep <= head_dim:
            raise ValueError(f"keep must be None or in [1, {head_dim}], got {keep}")
        if batch <= 0 or heads <= 0 or capacity < 0:
            raise ValueError(f"bad store shape: batch={batch}, heads={heads}, capacity={capacity}")
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.dtype, self.device, self.keep = dtype, torch.device(device), keep
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.length = 0
        self.slot = padded_keep(keep, self.itemsize) if keep is not None else 0
        words = bitmap_words(head_dim)
        self.bits = torch.zeros(batch, heads, capacity, words, dtype=torch.int32, device=self.device)
        if keep is not None:
            self.vals = torch.zeros(batch, heads, capacity, self.slot, dtype=dtype, device=self.device)
        else:
            self.vals = torch.zeros(batch, heads, 0, dtype=dtype, device=self.device)
            self.offs = torch.zeros(batch, heads, capacity, dtype=torch.int32, device=self.device)
            self.row_nnz = torch.zeros(batch, heads, dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ layout facts
    @property
    def fixed(self) -> bool:
        return self.keep is not None

    @property
    def capacity(self) -> int:
        return self.bits.shape[2]

    @property
    def nbytes(self) -> int:
        bufs = [self.bits, self.vals] + ([] if self.fixed else [self.offs, self.row_nnz])
        return sum(b.numel() * b.element_size() for b in bufs)

    @property
    def payload_nbytes(self) -> int:
        rows = self.batch * self.heads * self.length
        if self.fixed:
            return rows * fixed_token_nbytes(self.head_dim, self.keep, self.itemsize)
        nnz = int(self.row_nnz.sum())
        return rows * variable_token_nbytes(self.head_dim, 0, self.itemsize) + nnz * self.itemsize

    @property
    def dense_nbytes(self) -> int:
        return self.batch * self.heads * self.length * self.head_dim * self.itemsize

    # ------------------------------------------------------------------ growth
    def _grow(self, buf: Tensor, dim: int, used: int, need: int) -> Tensor:
        if buf.shape[dim] >= need:
            return buf
        # 1.25x growth: still amortised O(n) appends, but at most 25 % slack on a long prompt's store
        new_cap = max(need, buf.shape[dim] + buf.shape[dim] // 4, 16)
        shape = list(buf.shape)
        shape[dim] = new_cap
        out = torch.zeros(shape, dtype=buf.dtype, device=buf.device)
        out.narrow(dim, 0, used).copy_(buf.narrow(dim, 0, used))
        return out

    def reserve(self, tokens: int, values_per_row: int = 0) -> None:
        """Make room for ``tokens`` more tokens (and, variable layout, ``values_per_row`` more values)."""
        need = self.length + tokens
        self.bits = self._grow(self.bits, 2, self.length, need)
        if self.fixed:
            self.vals = self._grow(self.vals, 2, self.length, need)
        else:
            self.offs = self._grow(self.offs, 2, self.length, need)
            used = int(self.row_nnz.max())
            self.vals = self._grow(self.vals, 2, used, used + values_per_row)

    # ------------------------------------------------------------------ appending
    def append(self, rows: Tensor, mask: Tensor, backend: str = "auto") -> None:
        """Append ``rows`` [B, H, n, D] keeping the entries where ``mask`` is True (zeros may be kept)."""
        from mustafar.kernels.dispatch import pack_into

        _check_rows(rows, self.batch, self.heads, self.head_dim, self.dtype)
        if mask.shape != rows.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool of shape {tuple(rows.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        if rows.shape[2] == 0:
            return
        counts = mask.sum(-1)
        if self.fixed:
            bad = counts != self.keep
            if bool(bad.any()):
                raise ValueError(
                    f"fixed layout needs exactly keep={self.keep} kept entries per token, "
                    f"got a token with {int(counts[bad][0])}"
                )
        pack_into(self, rows, mask, counts, backend=backend)

    def append_topk(self, rows: Tensor, keep: int, backend: str = "auto") -> None:
        """Prune ``rows`` to their per-token top-``keep`` by |x| (ties: lower channel first) and append them."""
        from mustafar.kernels.dispatch import topk_pack_into

        _check_rows(rows, self.batch, self.heads, self.head_dim, self.dtype)
        if not 0 < keep <= self.head_dim:
            raise ValueError(f"keep must be in [1, {self.head_dim}], got {keep}")
        if self.fixed and keep != self.keep:
            raise ValueError(f"this store keeps {self.keep} values per token, append_topk got keep={keep}")
        if rows.shape[2] == 0:
            return
        topk_pack_into(self, rows, keep, backend=backend)

    # ------------------------------------------------------------------ reading back
    def to_dense(self) -> Tensor:
        """[B, H, T, D] with zeros at pruned entries (exact round trip of the appended rows)."""
        return unpack_tokens(self, 0, self.length)


def token_value_index(store: CompressedStore, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """(kept mask [B, H, n, D], flat index into ``store.vals`` of each entry, valid where the mask is True)."""
    mask = unpack_bitmap(store.bits[:, :, start:stop], store.head_dim)
    rank = mask.to(torch.int64).cumsum(-1) - 1
    if store.fixed:
        n = stop - start
        row = torch.arange(store.batch * store.heads, device=mask.device).view(store.batch, store.heads, 1)
        slot = row * store.capacity + torch.arange(start, stop, device=mask.device)
        base = (slot * store.slot).view(store.batch, store.heads, n, 1)
    else:
        row = torch.arange(store.batch * store.heads, device=mask.device).view(store.batch, store.heads, 1, 1)
        base = row * store.vals.shape[2] + store.offs[:, :, start:stop, None].to(torch.int64)
    return mask, base + rank


def unpack_tokens(store: CompressedStore, start: int, stop: int) -> Tensor:
    """Dense [B, H, stop - start, D] of the stored tokens ``start:stop`` (pure PyTorch)."""
    mask, index = token_value_index(store, start, stop)
    out = torch.zeros(mask.shape, dtype=store.dtype, device=mask.device)
    out[mask] = store.vals.reshape(-1)[index[mask]]
    return out


def pack_reference(store: CompressedStore, rows: Tensor, mask: Tensor, counts: Tensor) -> None:
    """Pure-PyTorch pack of ``rows`` under ``mask`` into the store's next slots (growing it as needed)."""
    n = rows.shape[2]
    if store.fixed:
        store.reserve(n)
    else:
        store.reserve(n, int(counts.sum(-1).max()))
        starts = store.row_nnz[:, :, None] + counts.cumsum(-1) - counts
        store.offs[:, :, store.length : store.length + n] = starts.to(torch.int32)
        store.row_nnz += counts.sum(-1)
    t0 = store.length
    store.bits[:, :, t0 : t0 + n] = pack_bitmap(mask)
    if store.fixed:
        store.vals[:, :, t0 : t0 + n].zero_()
    store.length = t0 + n
    _, index = token_value_index(store, t0, t0 + n)
    store.vals.view(-1)[index[mask]] = rows[mask]
