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

The store is data: it lays out, grows and accounts for its buffers, appends tokens that are already packed and
unpacks them again. Pruning rows and packing them into a store is :mod:`mustafar.kernels`' job.

**Word-quota stores** (``word_quota=True``, fixed layout only; the ``word`` keep rule): every token additionally
keeps exactly ``quotas[g]`` entries in bitmap word ``g`` (:func:`mustafar.pruning.keep.word_quotas`), which lets the
scatter decoder walk each word with a trip count known at compile time. The writers guarantee it; the store checks
it only on demand (:meth:`CompressedStore.check_word_counts`), never on the append path.

**N:M stores** (``nm_group=4``, ``8`` or ``16``, fixed layout only; the ``nm4`` / ``nm8`` / ``nm16`` keep rules):
every group of ``nm_group`` consecutive channels of a token keeps exactly ``keep·nm_group/D`` entries (2 of 4 at
D = 64, keep 32), so each kept value's channel lies in a known small range, which a decoder can expand in registers
without a scatter. A 32-channel word holds whole groups, so a group count is also a fixed count per word and these
stores are word-quota stores too (the scatter decoder reads any of them as one). With ``nm_strided=True`` (groups
of 4 or 8 only: the ``nm4s`` / ``nm8s`` rules, groups of channels g, g + D/M, g + 2D/M, ...) a token's
channels are held in the **stored order** of :func:`stored_channels`: stored position ``p = M·g + j`` holds channel
``g + (D/M)·j``, so each strided group occupies M consecutive positions and the store is an N:M store of
consecutive groups in that order. Bitmap bits and packed values follow the stored order; everything that takes or
returns channel-space rows (the packs, :meth:`CompressedStore.to_dense`) permutes at the boundary.

**FP8 stores** (``value_dtype="fp8"``, fixed layout only; ``kv.value_dtype=fp8``): the value slots hold e4m3
codes (uint8 bit patterns, the slot padded to 8 bytes) and ``scales`` an fp32 power-of-two scale per token
(:mod:`mustafar.formats.fp8`): ``4·D/32 + padded8(keep) + 4`` bytes per token, 60 B at D = 128, s = 0.7. ``dtype``
stays the model's (what rows come in as and ``to_dense`` returns).

**Static stores** (``static=True``, fixed layout only) are what a CUDA graph can capture: their buffers are allocated
once at ``capacity`` and never grow, and the token count lives on the device, in ``length_tensor`` (int32 [B], one
count per batch row), instead of on the host. The Triton top-k pack writes each row's new tokens at that row's
device count and advances it on the device; the decoders read it there, with a launch plan fixed for ``capacity``
(:mod:`mustafar.kernels.decode`). No host code needs the count, so nothing synchronises. Host reads of ``length``
(accounting, ``to_dense()`` without a token count, host appends such as the PyTorch pack references) still work on a
static store: they copy the count to the host (a synchronisation) and raise if the rows differ or a device-side
append ran past ``capacity`` (device writes past it are dropped, never out of bounds). Reads by per-row count do not
raise on an overflowed store: ``row_lengths`` clamps each count to ``capacity``, and the PyTorch decode reference
(:func:`mustafar.kernels.reference.decode_attention_reference`) reads each row up to the smaller of its count and
``capacity``, as the decoders do.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from mustafar.config import VALUE_DTYPES
from mustafar.formats.fp8 import FP8_ALIGN, SCALE_BYTES, dequantize
from mustafar.pruning.keep import calibrated_nm_mask, fixed_count_mask, word_quotas

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_ALIGN_BYTES = 16


def _count(name: str, value: object) -> int:
    """``value`` as a Python int (numpy and 0-d tensor integers too), or one ValueError naming it: never a float or
    a bool, which would otherwise reach the buffer shapes as an opaque TypeError or a wrong size."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def padded_keep(keep: int, itemsize: int, align: int = _ALIGN_BYTES) -> int:
    """Value slots per token in the fixed layout: ``keep`` rounded up to an ``align``-byte multiple (16; 8 for
    fp8 codes)."""
    per_line = align // itemsize
    return -(-keep // per_line) * per_line


def bitmap_words(head_dim: int) -> int:
    return head_dim // 32


def fixed_token_nbytes(head_dim: int, keep: int, itemsize: int, value_dtype: str = "native") -> int:
    """Bytes one token of one (batch, head) row takes in the fixed layout (``itemsize``: the native values';
    fp8: one byte per slot, 8-byte padding, plus the token's scale)."""
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype must be one of {VALUE_DTYPES}, got {value_dtype!r}")
    if value_dtype == "fp8":
        return 4 * bitmap_words(head_dim) + padded_keep(keep, 1, FP8_ALIGN) + SCALE_BYTES
    return 4 * bitmap_words(head_dim) + padded_keep(keep, itemsize) * itemsize


def variable_token_nbytes(head_dim: int, nnz: int, itemsize: int) -> int:
    """Bytes one token with ``nnz`` kept values takes in the variable layout (bitmap + int32 offset + values)."""
    return 4 * bitmap_words(head_dim) + 4 + nnz * itemsize


def stored_channels(head_dim: int, nm_group: int, strided: bool) -> list[int]:
    """The original channel held at each stored position of a token: the identity, or (``strided``) position
    ``p = M·g + j`` holds channel ``g + (D/M)·j`` (M = ``nm_group``), which puts strided group g at positions
    M·g ... M·g + M − 1 in ascending channel order, so ties to the lower position are ties to the lower channel. A
    kernel computes it as ``(p % M)·(D/M) + p // M``."""
    if not strided:
        return list(range(head_dim))
    if nm_group not in (4, 8) or head_dim <= 0 or head_dim % nm_group:
        raise ValueError(
            f"strided N:M groups need nm_group 4 or 8 dividing a positive head_dim, got nm_group={nm_group!r}, "
            f"head_dim={head_dim}"
        )
    stride = head_dim // nm_group
    return [(p % nm_group) * stride + p // nm_group for p in range(head_dim)]


def pack_bitmap(mask: Tensor) -> Tensor:
    """bool [..., D] -> int32 [..., D // 32], LSB first."""
    d = mask.shape[-1] if mask.dim() else 0
    if mask.dtype != torch.bool or d <= 0 or d % 32:
        raise ValueError(
            f"mask must be bool [..., D] with D a positive multiple of 32, got {mask.dtype} {tuple(mask.shape)}"
        )
    weights = torch.ones(32, dtype=torch.int64, device=mask.device) << torch.arange(32, device=mask.device)
    words = (mask.reshape(*mask.shape[:-1], d // 32, 32).to(torch.int64) * weights).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_bitmap(words: Tensor, head_dim: int) -> Tensor:
    """int32 [..., D // 32] -> bool [..., D]."""
    if words.dtype != torch.int32 or words.dim() == 0 or words.shape[-1] * 32 != head_dim:
        raise ValueError(
            f"words must be int32 [..., {head_dim} // 32] for head_dim={head_dim}, got {words.dtype} "
            f"{tuple(words.shape)}"
        )
    shifts = torch.arange(32, device=words.device, dtype=torch.int32)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:-1], head_dim).bool()


class CompressedStore:
    """Appendable compressed rows (K or V) of shape [B, H_kv, T, D]; per-token bitmap layout.

    ``keep=int`` selects the fixed-nnz layout, ``keep=None`` the variable layout (module docstring). Buffers grow
    by 1.25x, so appending is amortised O(n). Buffers (read by the kernels): ``bits`` int32 [B, H, cap, D/32];
    fixed: ``vals`` [B, H, cap, padded_keep]; variable: ``vals`` [B, H, val_cap], ``offs`` int32 [B, H, cap].

    Writers either hand over packed tokens (:meth:`append_packed`) or claim slots (:meth:`extend`) and fill them
    in place (the prune+pack kernels). ``static=True``: fixed capacity, device-side token count; ``nm_strided``:
    channels held in the stored order of :func:`stored_channels` (module docstring).
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        keep: int | None,
        capacity: int = 0,
        static: bool = False,
        word_quota: bool = False,
        value_dtype: str = "native",
        nm_group: int = 0,
        nm_strided: bool = False,
    ) -> None:
        batch, heads, head_dim = _count("batch", batch), _count("heads", heads), _count("head_dim", head_dim)
        capacity = _count("capacity", capacity)
        keep = None if keep is None else _count("keep", keep)
        if head_dim <= 0 or head_dim % 32:
            raise ValueError(f"head_dim must be a positive multiple of 32, got {head_dim}")
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}")
        if keep is not None and not 0 < keep <= head_dim:
            raise ValueError(f"keep must be None or in [1, {head_dim}], got {keep}")
        if batch <= 0 or heads <= 0 or capacity < 0:
            raise ValueError(f"bad store shape: batch={batch}, heads={heads}, capacity={capacity}")
        if static and (keep is None or capacity <= 0):
            raise ValueError(
                f"a static store needs the fixed layout and a positive capacity, got keep={keep}, capacity={capacity}"
            )
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.dtype, self.device, self.keep = dtype, torch.device(device), keep
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.static = static
        if word_quota and keep is None:
            raise ValueError("word_quota stores need the fixed layout (keep=int), got keep=None")
        if nm_group not in (0, 4, 8, 16):
            raise ValueError(f"nm_group must be 0 (none), 4, 8 or 16 consecutive channels, got {nm_group!r}")
        if nm_group and (keep is None or keep * nm_group % head_dim):
            raise ValueError(
                f"nm_group={nm_group} keeps the same whole count in every {nm_group}-channel group, which needs the "
                f"fixed layout with keep * nm_group % head_dim == 0; got keep={keep}, head_dim={head_dim}"
            )
        if nm_strided and nm_group not in (4, 8):
            raise ValueError(
                f"nm_strided=True holds strided N:M groups and needs nm_group 4 or 8, got nm_group={nm_group!r}"
            )
        self.nm_group, self.nm_strided = nm_group, nm_strided
        # stored position -> channel (CPU), and the device indices that permute rows into / out of the stored order
        self._order: Tensor | None = None
        self._to_stored: Tensor | None = None
        self._to_channels: Tensor | None = None
        self._head_to_stored: Tensor | None = None  # per-head orders [B, H, 1, D] (set_head_order)
        self._head_order: Tensor | None = None  # its [B, H, D] view, made once (asked every step)
        self._head_to_channels: Tensor | None = None
        if nm_strided:
            self._order = torch.tensor(stored_channels(head_dim, nm_group, True), dtype=torch.int64)
            self._to_stored = self._order.to(self.device)
            self._to_channels = torch.argsort(self._order).to(self.device)
        self.word_quota = word_quota or nm_group > 0  # a fixed count per group is one per 32-channel word too
        if value_dtype not in VALUE_DTYPES:
            raise ValueError(f"value_dtype must be one of {VALUE_DTYPES}, got {value_dtype!r}")
        if value_dtype == "fp8" and keep is None:
            raise ValueError("fp8 stores need the fixed layout (keep=int), got keep=None")
        self.value_dtype = value_dtype
        self._views: dict[torch.dtype | str, tuple[Tensor, Tensor]] = {}
        # the sparse decode op's last launch from this (K) store, replayed while its inputs' signature holds
        # (mustafar.kernels.decode._Plan); never read here
        self.launch_plan: object | None = None
        self._length = 0
        # static stores count their tokens on the device (one count per batch row), dynamic ones on the host
        self._length_dev = torch.zeros(batch, dtype=torch.int32, device=self.device) if static else None
        if keep is None:
            self.slot = 0
        else:
            self.slot = padded_keep(keep, 1, FP8_ALIGN) if self.fp8 else padded_keep(keep, self.itemsize)
        words = bitmap_words(head_dim)
        self.bits = torch.zeros(batch, heads, capacity, words, dtype=torch.int32, device=self.device)
        if self.fp8:
            self.vals = torch.zeros(batch, heads, capacity, self.slot, dtype=torch.uint8, device=self.device)
            self.scales = torch.ones(batch, heads, capacity, dtype=torch.float32, device=self.device)
        elif keep is not None:
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
    def fp8(self) -> bool:
        """Values held as e4m3 codes with a per-token scale (module docstring)."""
        return self.value_dtype == "fp8"

    @property
    def token_nbytes(self) -> int:
        """Bytes one token of one (batch, head) row takes (fixed layout)."""
        if not self.fixed:
            raise ValueError("the variable layout has no fixed bytes per token; see payload_nbytes")
        return fixed_token_nbytes(self.head_dim, self.keep, self.itemsize, self.value_dtype)

    @property
    def layout_key(self) -> tuple:
        """Every property of the store a compiled decoder depends on (shape but not length, layout, value type,
        groups, orders), for launch-configuration caches: a field a cache's own list forgot once made a consecutive
        store reuse a calibrated store's kernel (results/kernels/NOTES.md, round 22)."""
        return (
            self.heads,
            self.head_dim,
            self.dtype,
            self.keep,
            self.slot,
            self.static,
            self.word_quota,
            self.value_dtype,
            self.nm_group,
            self.nm_strided,
            self._head_order is not None,
        )

    @property
    def channel_order(self) -> Tensor | None:
        """int64 [D] CPU: the original channel of each stored position (:func:`stored_channels`); None when the
        store holds channels in their own order or in a per-head order (:attr:`head_order`)."""
        return self._order

    @property
    def head_order(self) -> Tensor | None:
        """int64 [B, H, D]: the channel of each stored position per (row, head) of a store whose N:M groups were
        calibrated per head (:meth:`set_head_order`, the ``nm8c``/``nm16c`` rules), else None."""
        return self._head_order

    def set_head_order(self, order: Tensor, checked: bool = True) -> None:
        """Hold each (row, head)'s channels in ``order`` [B, H, D] (stored position -> channel: the calibrated
        rule's groups are its consecutive runs of ``nm_group``), set while the store is empty. Setting it again
        (a static cache's next prompt, after :meth:`reset`) refills the same tensors in place: a captured decode
        step keeps reading their addresses. ``checked=False`` skips the check that ``order`` permutes the
        channels, a host synchronisation on the GPU, for the caches' own orders (the calibrated rule's
        :func:`~mustafar.pruning.keep.balanced_groups` and the identity: permutations by construction), which
        would otherwise stall every layer of every prefill."""
        if self.nm_strided or not self.nm_group:
            raise ValueError("a per-head channel order needs an nm_group store with consecutive groups")
        if self.length:
            raise ValueError(
                "the channel order is set while the store is empty (before packing, or after reset)"
            )
        want = (self.batch, self.heads, self.head_dim)
        if tuple(order.shape) != want:
            raise ValueError(f"order must be [{want[0]}, {want[1]}, {want[2]}], got {tuple(order.shape)}")
        order = order.to(self.device, torch.int64)
        if checked and not torch.equal(
            order.sort(-1).values, torch.arange(self.head_dim, device=self.device).expand(want)
        ):
            raise ValueError("order must be a permutation of the channels for every (row, head)")
        held = (
            order.unsqueeze(2).clone(),
            order.argsort(-1).unsqueeze(2),
            order.to(torch.int32).contiguous(),
        )
        if self._head_to_stored is None:
            self._head_to_stored, self._head_to_channels, self._head_order_words = held
            self._head_order = self._head_to_stored[:, :, 0]
            return
        for buf, new in zip((self._head_to_stored, self._head_to_channels, self._head_order_words), held):
            buf.copy_(new)

    def head_order_words(self) -> Tensor:
        """The per-head order as int32 [B, H, D] (a kernel argument; made once, with the order)."""
        if self._head_to_stored is None:
            raise ValueError("this store holds no per-head channel order")
        return self._head_order_words

    def _permute(self, x: Tensor, fixed: Tensor | None, per_head: Tensor | None) -> Tensor:
        if per_head is not None:
            if x.dim() != 4 or x.shape[:2] != per_head.shape[:2]:
                raise ValueError(f"a per-head order permutes [B, H, n, D] tensors, got {tuple(x.shape)}")
            return x.gather(-1, per_head.to(x.device).expand(x.shape))
        return x if fixed is None else x.index_select(-1, fixed.to(x.device))

    def to_stored(self, x: Tensor) -> Tensor:
        """``x`` [..., D] in channel order ([B, H, n, D] under a per-head order), permuted into the store's stored
        order (``x`` itself when identity)."""
        return self._permute(x, self._to_stored, self._head_to_stored)

    def to_channels(self, x: Tensor) -> Tensor:
        """``x`` [..., D] in the store's stored order, permuted back into channel order (the inverse of
        :meth:`to_stored`)."""
        return self._permute(x, self._to_channels, self._head_to_channels)

    def kept_mask(self, score: Tensor, keep: int) -> Tensor:
        """The pattern this fixed-layout store holds for ``score`` [..., D] (channel order): ``keep`` entries per
        token, top-|score| per 32-channel word on a ``word_quota`` store, per consecutive, strided or per-head
        (:attr:`head_order`) group on an ``nm_group`` one, ties to the lower stored position; what every writer
        that prunes for this store applies."""
        if self._head_to_stored is not None:
            return calibrated_nm_mask(score, keep, self.nm_group, self._head_to_stored.to(score.device))
        return fixed_count_mask(score, keep, self.word_quota, group=self.nm_group, strided=self.nm_strided)

    @property
    def quotas(self) -> tuple[int, ...] | None:
        """Entries every token keeps per 32-channel bitmap word when the store guarantees them (``word_quota``)."""
        return word_quotas(self.head_dim, self.keep) if self.word_quota else None

    def row_lengths(self) -> list[int]:
        """Tokens held by each batch row (a static store's per-row device counts; a host synchronisation)."""
        if self.static:
            return [min(int(n), self.capacity) for n in self._length_dev.tolist()]
        return [self._length] * self.batch

    def check_word_counts(self, row_lengths: list[int] | None = None) -> None:
        """Raise unless every stored token of every row keeps exactly :attr:`quotas` entries per bitmap word (the
        scatter decoder's invariant) and, on an ``nm_group`` store, ``keep·nm_group/D`` in every group of
        ``nm_group`` consecutive positions (words and groups of the stored order: on an ``nm_strided`` store each
        group is one strided channel group). ``row_lengths``: tokens per batch row when a caller counts them itself
        (a host-counted store of a padded static cache), default :meth:`row_lengths`. Reads the whole store: for
        tests and debugging, not the hot path."""
        if self.quotas is None:
            raise ValueError("this store holds no word quotas (create it with word_quota=True)")
        units = [("word", 32, torch.tensor(self.quotas, device=self.device))]
        if self.nm_group:
            per = self.keep * self.nm_group // self.head_dim
            unit = f"{'strided ' if self.nm_strided else ''}{self.nm_group}-channel group"
            units.append((unit, self.nm_group, torch.tensor(per, device=self.device)))
        for b, n in enumerate(self.row_lengths() if row_lengths is None else row_lengths):
            mask = unpack_bitmap(self.bits[b, :, :n], self.head_dim)
            for unit, size, want in units:
                counts = mask.view(self.heads, n, -1, size).sum(-1)
                bad = (counts != want).any(-1).nonzero()
                if bad.numel():
                    h, t = bad[0].tolist()
                    raise ValueError(
                        f"row {b}, head {h}, token {t} keeps {counts[h, t].tolist()} entries per {unit}; the "
                        f"store's quotas are {want.expand(counts.shape[-1]).tolist()}"
                    )

    @property
    def capacity(self) -> int:
        return self.bits.shape[2]

    @property
    def length(self) -> int:
        """Tokens held. A static store reads its device count here: a host synchronisation, kept off hot paths."""
        if not self.static:
            return self._length
        counts = self._length_dev.tolist()
        if max(counts) > self.capacity:
            raise ValueError(
                f"static store overflowed: appends reached {max(counts)} tokens, capacity is {self.capacity}"
            )
        if min(counts) != max(counts):
            raise ValueError(f"static store rows hold different token counts {counts}; read length_tensor")
        return counts[0]

    @length.setter
    def length(self, tokens: int) -> None:
        tokens = _count("length", tokens)
        if not 0 <= tokens <= self.capacity:
            raise ValueError(f"length must be in [0, {self.capacity}], got {tokens}")
        if self.static:
            self._length_dev.fill_(tokens)
        else:
            self._length = tokens

    @property
    def length_tensor(self) -> Tensor:
        """int32 [B] device token count per batch row (static stores); what the kernels read and advance."""
        if not self.static:
            raise ValueError(
                "a dynamic store counts its tokens on the host (length); create it with static=True"
            )
        return self._length_dev

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` more tokens per row on the device (static stores; after a kernel filled their slots)."""
        self.length_tensor.add_(tokens)

    def reset(self) -> None:
        """Forget every token (buffers kept; on a static store a device op, so capturable)."""
        if self.static:
            self._length_dev.zero_()
        else:
            self._length = 0
            if not self.fixed:
                self.row_nnz.zero_()

    @property
    def nbytes(self) -> int:
        bufs = [self.bits, self.vals] + ([] if self.fixed else [self.offs, self.row_nnz])
        bufs += [self.scales] if self.fp8 else []
        return sum(b.numel() * b.element_size() for b in bufs)

    @property
    def payload_nbytes(self) -> int:
        rows = self.batch * self.heads * self.length
        if self.fixed:
            return rows * self.token_nbytes
        nnz = int(self.row_nnz.sum())
        return rows * variable_token_nbytes(self.head_dim, 0, self.itemsize) + nnz * self.itemsize

    @property
    def dense_nbytes(self) -> int:
        return self.batch * self.heads * self.length * self.head_dim * self.itemsize

    def vals_as(self, dtype: torch.dtype) -> Tensor:
        """``vals`` viewed as ``dtype`` (the staged decoder reads the value slots as int32 words), cached until the
        buffer is replaced: a launch needs no new view object per call."""
        if dtype == self.vals.dtype:
            return self.vals
        cached = self._views.get(dtype)
        if cached is None or cached[0] is not self.vals:
            cached = self._views[dtype] = (self.vals, self.vals.view(dtype))
        return cached[1]

    def scale_words(self) -> Tensor:
        """``scales`` viewed as int32 (the scatter decoder stages them with ``cp.async``), cached like
        :meth:`vals_as`."""
        cached = self._views.get("scales")
        if cached is None or cached[0] is not self.scales:
            cached = self._views["scales"] = (self.scales, self.scales.view(torch.int32))
        return cached[1]

    def check_rows(self, rows: Tensor, mask: Tensor | None = None) -> None:
        """Raise unless ``rows`` are [B, H, n, D] of this store's dtype (and ``mask`` a bool tensor like them)."""
        b, h, d = self.batch, self.heads, self.head_dim
        if rows.dim() != 4 or rows.shape[0] != b or rows.shape[1] != h or rows.shape[3] != d:
            raise ValueError(f"rows must have shape [{b}, {h}, n, {d}], got {tuple(rows.shape)}")
        if rows.dtype != self.dtype:
            raise ValueError(f"rows dtype {rows.dtype} does not match the store dtype {self.dtype}")
        if mask is not None and (mask.shape != rows.shape or mask.dtype != torch.bool):
            raise ValueError(
                f"mask must be bool of shape {tuple(rows.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )

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
        """Make room for ``tokens`` more tokens (and, variable layout, ``values_per_row`` more values); a static
        store cannot grow and raises instead."""
        need = self.length + tokens
        if self.static:
            if need > self.capacity:
                raise ValueError(
                    f"static store of capacity {self.capacity} holds {self.length} tokens, cannot take {tokens} more"
                )
            return
        self.bits = self._grow(self.bits, 2, self.length, need)
        if self.fixed:
            self.vals = self._grow(self.vals, 2, self.length, need)
            if self.fp8:
                self.scales = self._grow(self.scales, 2, self.length, need)
        else:
            self.offs = self._grow(self.offs, 2, self.length, need)
            used = int(self.row_nnz.max())
            self.vals = self._grow(self.vals, 2, used, used + values_per_row)

    # ------------------------------------------------------------------ appending
    @contextmanager
    def rollback_on_error(self) -> Iterator[None]:
        """Undo an append whose kernel launch fails: its claimed slots would otherwise decode as empty tokens. A
        static store advances only after its launch, so it has nothing to undo."""
        if self.static:
            yield
            return
        length, nnz = self._length, None if self.fixed else self.row_nnz.clone()
        try:
            yield
        except BaseException:
            self._length = length
            if nnz is not None:
                self.row_nnz = nnz
            raise

    def extend(self, tokens: int, counts: Tensor | int) -> int:
        """Claim slots for ``tokens`` more tokens holding ``counts`` kept values each ([B, H, tokens], or one count
        for all) and return the first one's index; the caller writes their bitmap words and values.

        Fixed layout: every count must be ``keep``. Variable layout: the tokens' value offsets are recorded here.
        """
        if self.fixed:
            if isinstance(counts, int):
                wrong = None if counts == self.keep else counts
            else:
                off = counts[counts != self.keep]
                wrong = int(off[0]) if off.numel() else None
            if wrong is not None:
                raise ValueError(
                    f"fixed layout needs exactly keep={self.keep} kept entries per token, got a token with {wrong}"
                )
            self.reserve(tokens)
        else:
            if isinstance(counts, int):
                self.reserve(tokens, tokens * counts)
                starts = self.row_nnz[:, :, None] + counts * torch.arange(tokens, device=self.device)
                self.row_nnz += tokens * counts
            else:
                self.reserve(tokens, int(counts.sum(-1).max()))
                starts = self.row_nnz[:, :, None] + counts.cumsum(-1) - counts
                self.row_nnz += counts.sum(-1)
            self.offs[:, :, self.length : self.length + tokens] = starts.to(torch.int32)
        first = self.length
        if self.static:
            self.advance(tokens)
        else:
            self._length += tokens
        return first

    def append_packed(self, bits: Tensor, values: Tensor, scales: Tensor | None = None) -> None:
        """Append packed tokens: ``bits`` int32 [B, H, n, D/32] (the kept positions) and ``values``, the kept values
        of all n tokens flattened in (batch, head, token, position) order, as ``rows[mask]`` lists them, both in the
        store's stored order (:meth:`to_stored`; the channel order unless ``nm_strided``); on an fp8 store
        ``values`` are e4m3 codes (uint8) and ``scales`` fp32 [B, H, n] their tokens' scales."""
        b, h, w = self.batch, self.heads, bitmap_words(self.head_dim)
        if bits.dim() != 4 or bits.shape[:2] != (b, h) or bits.shape[3] != w or bits.dtype != torch.int32:
            raise ValueError(f"bits must be int32 [{b}, {h}, n, {w}], got {bits.dtype} {tuple(bits.shape)}")
        want = torch.uint8 if self.fp8 else self.dtype
        if values.dim() != 1 or values.dtype != want:
            raise ValueError(f"values must be 1-D {want}, got {values.dtype} {tuple(values.shape)}")
        if self.fp8 and (scales is None or scales.shape != bits.shape[:3] or scales.dtype != torch.float32):
            got = None if scales is None else (scales.dtype, tuple(scales.shape))
            raise ValueError(f"an fp8 store needs fp32 scales of shape {tuple(bits.shape[:3])}, got {got}")
        mask = unpack_bitmap(bits, self.head_dim)
        n = bits.shape[2]
        kept = int(mask.sum())
        # checked before extend claims the slots: a failed append leaves no empty tokens behind
        if values.numel() != kept:
            raise ValueError(f"values hold {values.numel()} entries, the bitmaps keep {kept}")
        t0 = self.extend(n, mask.sum(-1))
        self.bits[:, :, t0 : t0 + n] = bits
        if self.fixed:
            self.vals[:, :, t0 : t0 + n].zero_()
        if self.fp8:
            self.scales[:, :, t0 : t0 + n] = scales
        self.vals.view(-1)[_value_index(self, mask, t0)[mask]] = values

    # ------------------------------------------------------------------ reading back
    def to_dense(self, tokens: int | None = None) -> Tensor:
        """[B, H, T, D] in channel order with zeros at pruned entries (exact round trip of the appended rows); the
        first ``tokens`` slots when given (a static store's rows may hold different counts)."""
        n = self.length if tokens is None else tokens
        mask = unpack_bitmap(self.bits[:, :, :n], self.head_dim)
        if self.fp8:  # a token's slots dequantised with its scale, the kept ones placed by rank
            slots = dequantize(self.vals[:, :, :n], self.scales[:, :, :n], self.dtype)
            rank = (mask.to(torch.int64).cumsum(-1) - 1).clamp(0, self.slot - 1)
            return self.to_channels(slots.gather(-1, rank).masked_fill(~mask, 0))
        out = torch.zeros(mask.shape, dtype=self.dtype, device=self.device)
        out[mask] = self.vals.reshape(-1)[_value_index(self, mask, 0)[mask]]
        return self.to_channels(out)


def _value_index(store: CompressedStore, mask: Tensor, start: int) -> Tensor:
    """Flat index into ``store.vals`` of every entry of the tokens from ``start`` whose kept ``mask`` [B, H, n, D]
    is given (valid where the mask is True)."""
    rank = mask.to(torch.int64).cumsum(-1) - 1
    rows = torch.arange(store.batch * store.heads, device=mask.device).view(store.batch, store.heads, 1)
    if store.fixed:
        slot = rows * store.capacity + torch.arange(start, start + mask.shape[2], device=mask.device)
        base = (slot * store.slot)[..., None]
    else:
        offs = store.offs[:, :, start : start + mask.shape[2], None].to(torch.int64)
        base = (rows * store.vals.shape[2])[..., None] + offs
    return base + rank
