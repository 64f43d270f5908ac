"""KV caches that prune: one layer class per storage scheme, one `Cache` that holds them.

Both layers keep the newest tokens dense and hand older ones to the K and V `SidePruner`s after every attention
call (`after_attention`, invoked by `mustafar.attention`). `MaskedLayer` zeroes pruned entries inside an
ordinary dense cache (any device, saves nothing: what the paper's accuracy tables used). `CompressedLayer` moves
final tokens into bitmap-compressed stores that the sparse decode kernel reads directly.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from mustafar.allocation import Allocator
from mustafar.config import KVConfig
from mustafar.eviction import snapkv_keep
from mustafar.formats import CompressedStore
from mustafar.formats.bitmap import fixed_token_nbytes, unpack_bitmap, variable_token_nbytes
from mustafar.formats.fp8 import fake_quantize
from mustafar.kernels import pack_into, topk_pack_into
from mustafar.pruning import Observation, RowPruner, SidePruner
from mustafar.pruning.keep import CALIBRATED_GROUPS, NM_GROUPS


class UnsupportedCacheOperation(RuntimeError):
    pass


class UnattachedCacheError(RuntimeError):
    pass


DECODE_HEADROOM = (
    256  # tokens of store capacity reserved beyond what a flush needs: decode appends don't regrow
)


def kernel_backend() -> str:
    """Kernel backend for compressed mode: auto (Triton on CUDA, PyTorch elsewhere), triton or torch.

    MUSTAFAR_KERNEL_BACKEND=triton with TRITON_INTERPRET=1 runs the real kernels on a CPU (slow; for tests).
    """
    return os.environ.get("MUSTAFAR_KERNEL_BACKEND", "auto")


def word_quota(policy: KVConfig, side: str) -> bool:
    """Whether `side`'s stores hold word quotas: pruned sides under `word` or an N:M rule (groups of 4, 8 or 16, in
    the stored order, hold a fixed count per 32-position word too). A side with sparsity 0 keeps every entry, so
    its stores stay plain and the decoder choice follows from the pruned sides."""
    return (policy.side_keep_rule(side) == "word" or nm_group(policy, side) > 0) and getattr(
        policy, side
    ).active


def nm_group(policy: KVConfig, side: str) -> int:
    """Channels per N:M group of `side`'s stores on a pruned side (4: `nm4`, `nm4s`; 8: `nm8`, `nm8s`, `nm8c`;
    16: `nm16`, `nm16c`), else 0."""
    if not getattr(policy, side).active:
        return 0
    rule = policy.side_keep_rule(side)
    return CALIBRATED_GROUPS.get(rule) or NM_GROUPS.get(rule, (0, False))[0]


def nm_strided(policy: KVConfig, side: str) -> bool:
    """Whether `side`'s stores hold strided N:M groups (`nm4s`, `nm8s` on a pruned side) in the stored order of
    `mustafar.formats.bitmap.stored_channels`."""
    return nm_group(policy, side) > 0 and NM_GROUPS.get(policy.side_keep_rule(side), (0, False))[1]


def calibrated(policy: KVConfig, side: str) -> bool:
    """Whether `side`'s N:M groups are calibrated per (row, KV head) at prefill (`nm8c`, `nm16c` on a pruned side)."""
    return getattr(policy, side).active and policy.side_keep_rule(side) in CALIBRATED_GROUPS


class MustafarLayer(DynamicLayer):
    """Common schedule: pruners per side and the observation they need."""

    is_croppable = False

    def __init__(self, policy: KVConfig, layer_idx: int = 0):
        super().__init__()
        self.policy, self.layer_idx = policy, layer_idx
        self.rules = {side: policy.layer_rule(side, layer_idx) for side in ("k", "v")}  # this layer's rules
        # False for a layer a per-layer list leaves whole: its inactive pruners call every token final at once,
        # so the window is held back here (it stays dense and in the model's dtype, as in a pruned layer)
        self.prunes = any(rule.active for rule in self.rules.values())
        self.bound = False  # set by `mustafar.attach`: only the mustafar attention function prunes
        self.awaiting = False  # keys arrived and the mustafar attention function has not run on them yet
        self.pruners = {
            side: SidePruner(rule, side, policy.side_keep_rule(side), policy.window)
            for side, rule in self.rules.items()
        }
        self.allocator: Allocator | None = None  # set by MustafarCache when kv.allocation is not uniform
        self.pads: list[int] | None = None  # left-pad columns per row, see set_padding
        self.pad_columns: torch.Tensor | None = None  # the same on the cache's device
        self.evicted: list[int] | None = (
            None  # prompt tokens evicted per row (set at the first attention call)
        )
        # after an eviction: each cached prompt column's column before it, [B, H_kv, n] (a local layer's window is
        # counted in those; columns appended later sit `evict_shift` past theirs)
        self.survivor_cols: torch.Tensor | None = None
        self.evict_shift = 0
        self.rounded = 0  # mask mode with fp8 values: columns already given the stores' rounding
        # set once a one-token call followed the prompt: a later multi-token call then appends to a text
        self.decoded = False

    def set_padding(self, pads: list[int], device: torch.device | str) -> None:
        """Left-pad columns per row of the coming prompt: pruning then treats each row as if it ran alone."""
        if self.pruned_any:
            raise RuntimeError("set_padding must be called before the prompt is pruned")
        self.pads = list(pads)
        self.pad_columns = torch.tensor(self.pads, dtype=torch.long, device=device)
        for side, rule in self.rules.items():
            if rule.active and rule.direction == "channel":  # ThinK included: its direction is "channel"
                self.pruners[side] = RowPruner(
                    rule, side, self.policy.side_keep_rule(side), self.policy.window, self.pads
                )
            else:
                self.pruners[side].pads = self.pad_columns

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # Without the binding the model's own attention would run on this cache and nothing would ever be pruned.
        if not self.bound:
            raise UnattachedCacheError(
                "this MustafarCache is not attached to the model, so it would prune nothing: generate inside "
                "`with mustafar.prune(model, ...) as cache:` or `with mustafar.attach(model, cache):`"
            )
        if self.awaiting:  # a model the cache is not attached to runs its own attention, which never prunes
            raise UnattachedCacheError(
                f"layer {self.layer_idx} of this MustafarCache got new keys twice without mustafar attention "
                "running in between: the cache is used by a model it is not attached to (attach it to that model "
                "with `mustafar.prune(model, ...)` or `mustafar.attach(model, cache)`), or an earlier call failed"
            )
        if self.pads is not None and not self.is_initialized:  # the prompt the declared pads belong to
            self._check_pads(key_states.shape[0])
        n = key_states.shape[-2]
        if self.decoded and n > 1 and self.layer_idx == 0:
            # a second `generate` in one `prune` block feeds its whole prompt after the first generation's tokens:
            # legal (a continuation), but as an independent prompt it silently attends to the old text
            warnings.warn(
                f"this MustafarCache already holds a generation ({self.get_seq_length()} tokens): the {n} new "
                "tokens are appended and attend to all of it. For an independent prompt open a new "
                "`mustafar.prune` block or call `cache.reset()` first; to continue the text, pass only the new "
                "tokens",
                stacklevel=2,
            )
        if n == 1 and self.is_initialized:
            self.decoded = True
        self.awaiting = True
        return super().update(key_states, value_states, *args, **kwargs)

    def _check_pads(self, batch: int, length: int | None = None) -> None:
        """The declared pads against the batch (at the prompt's first chunk) and, given the cached `length`, a real
        token per row (checked where counts are read: a chunked prompt's first chunk may be all pads)."""
        if len(self.pads) != batch:
            raise ValueError(f"set_padding declared {len(self.pads)} pad counts for a batch of {batch} rows")
        row = None if length is None else next((i for i, p in enumerate(self.pads) if p >= length), None)
        if row is not None:
            raise ValueError(
                f"set_padding declared {self.pads[row]} pad columns for row {row} of a {length}-token prompt: "
                "every row needs at least one real token"
            )

    @property
    def pruned_any(self) -> bool:
        """True once an attention call has handed tokens to the pruners (padding can no longer change)."""
        return any(p.prefilled for p in self.pruners.values())

    @property
    def needs(self) -> set[str]:
        return {p.needs for p in self.pruners.values() if p.needs}

    def after_attention(self, obs: Observation) -> None:
        """Prune after an attention call; under an allocation the prompt waits until every layer has reported."""
        self.awaiting = False
        if self.allocator is not None and not self.allocator.decided:
            self.allocator.report(self, obs)
            return
        if self.allocator is not None and obs.q_len > 1:  # the keeps were decided from the first chunk alone
            raise ValueError(
                f"kv.allocation={self.policy.allocation} needs the whole prompt in one call: {obs.q_len} more "
                "prompt tokens arrived after the keeps were decided from the first call (chunked prefill is not "
                "supported)"
            )
        self.prune(obs)

    def prune(self, obs: Observation) -> None:
        raise NotImplementedError

    def set_keeps(self, side: str, keeps: torch.Tensor) -> None:
        """Per-(row, KV head) keep counts [B, H] of `side`, from the allocation."""
        self.pruners[side].set_keeps(keeps)

    def round_stored(self) -> None:
        """Mask modes with fp8 values: give the columns compressed mode would have moved into its fp8 stores (final
        on both sides: past the window) the stores' rounding, on K and V alike (nothing with native values)."""
        if self.policy.value_dtype != "fp8":
            return
        end = min(p.final for p in self.pruners.values())
        if not self.prunes:
            end = max(0, end - self.policy.window)
        if end > self.rounded:
            for tensor in (self.keys, self.values):
                tensor[:, :, self.rounded : end] = fake_quantize(tensor[:, :, self.rounded : end])
            self.rounded = end

    def evict(self, query: torch.Tensor, scaling: float, softcap: float | None, obs: Observation) -> None:
        """Remove the prompt tokens `policy.evict` does not keep, before they are pruned (first attention call).

        The survivors of each row are right-aligned (rows keep equal lengths; a row with fewer survivors gets new
        left pad columns, zeros that `set_padding` keeps out of attention and counts). Keys are cached after
        RoPE, so a survivor keeps its original position. The prompt must arrive in one call: a later call of more
        than one query (a second prompt chunk) is refused, since the first was scored and evicted alone.
        """
        if self.policy.evict == "none":
            return
        if self.evicted is not None:
            if query.shape[2] > 1:
                raise ValueError(
                    f"kv.evict={self.policy.evict} needs the whole prompt in one call: {query.shape[2]} more prompt "
                    "tokens arrived after the first call was scored and evicted (chunked prefill is not supported)"
                )
            return
        b, _, t, _ = self.keys.shape
        self.evicted = [0] * b
        if query.shape[2] != t or self.pruned_any:  # tokens were cached before this call: nothing is evicted
            return
        pads = self.pads or [0] * b
        kept = snapkv_keep(query, self.keys, scaling, self.policy, pads, softcap)
        self.evicted = [t - pad - k.shape[-1] for pad, k in zip(pads, kept)]
        if not any(self.evicted):
            return
        n = max(k.shape[-1] for k in kept)
        new_pads = [n - k.shape[-1] for k in kept]
        index = torch.stack([torch.nn.functional.pad(k, (p, 0)) for k, p in zip(kept, new_pads)])  # [B, H, n]
        real = torch.arange(n, device=index.device).view(1, 1, n) >= torch.tensor(
            new_pads, device=index.device
        ).view(b, 1, 1)
        d = self.keys.shape[-1]
        gather = index.unsqueeze(-1).expand(-1, -1, -1, d)
        self.keys = self.keys.gather(2, gather).masked_fill(~real.unsqueeze(-1), 0)
        self.values = self.values.gather(2, gather).masked_fill(~real.unsqueeze(-1), 0)
        self.survivor_cols, self.evict_shift = index, t - n
        if obs.attention_stat is not None:
            obs.attention_stat = obs.attention_stat.gather(2, index).masked_fill(~real, 0)
        if self.pads is not None or any(new_pads):
            self.set_padding(new_pads, self.keys.device)

    def evicted_bytes(self, row: int | None = None) -> int:
        """Dense bytes of the evicted prompt tokens (K and V) of `row`, or of every row."""
        if not self.evicted:
            return 0
        tokens = sum(self.evicted) if row is None else self.evicted[row]
        return tokens * self.keys.shape[1] * self.keys.shape[3] * self.keys.element_size() * 2

    def reset(self) -> None:
        """Forget the batch (`Cache.reset`): no tokens, fresh pruners, padding undeclared; the binding stays.
        Zeroing the tensors alone would leave the pruners' positions and counts of the old batch in place."""
        bound = self.bound
        MustafarLayer.__init__(self, self.policy, self.layer_idx)
        self.bound = bound

    def crop(self, tokens_to_remove: int) -> None:
        raise UnsupportedCacheOperation("a pruned KV cache cannot be cropped (assisted/speculative decoding)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise UnsupportedCacheOperation("a pruned KV cache does not support beam search; use greedy decoding")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise UnsupportedCacheOperation("a pruned KV cache cannot be expanded (num_return_sequences > 1)")


class MaskedLayer(MustafarLayer):
    """Pruned entries are zeros in the dense cache (`self.keys`, `self.values` as in DynamicLayer)."""

    def prune(self, obs: Observation) -> None:
        for side, tensor in (("k", self.keys), ("v", self.values)):
            pruner = self.pruners[side]
            start = pruner.final
            n, mask = pruner.step(tensor[:, :, start:], obs)
            if mask is not None:
                tensor[:, :, start : start + n].masked_fill_(~mask, 0)
        self.round_stored()

    def dense_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys, self.values

    def row_payload_nbytes(self, b: int, pad: int) -> int | None:
        return None


class CompressedLayer(MustafarLayer):
    """Final tokens live in compressed stores; the rest (window, pending groups) in a dense tail.

    K and V may finalise tokens at different times (per-channel rules, ThinK): a token enters the stores only
    once both sides are final, and until then it waits in the tail with its decided zeros already applied.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        b, h, _, d = key_states.shape
        self.stores = {
            side: CompressedStore(
                b,
                h,
                d,
                key_states.dtype,
                key_states.device,
                keep=self.pruners[side].keep_for(d),
                word_quota=word_quota(self.policy, side),
                nm_group=nm_group(self.policy, side),
                nm_strided=nm_strided(self.policy, side),
                value_dtype=self.policy.value_dtype,
            )
            for side in ("k", "v")
        }
        # Final rows still waiting in the tail, oldest first: (count, keep mask), mask None = "pack the top-k".
        self.pending: dict[str, deque[tuple[int, torch.Tensor | None]]] = {"k": deque(), "v": deque()}

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.stores["k"].length + self.keys.shape[-2]

    @property
    def stored(self) -> int:
        return self.stores["k"].length if self.is_initialized else 0

    def set_keeps(self, side: str, keeps: torch.Tensor) -> None:
        """As MustafarLayer's; the (still empty) store of `side` is rebuilt for the new keep (None: one keep per
        (row, head) is not shared, so the variable layout)."""
        super().set_keeps(side, keeps)
        old = self.stores[side]
        keep = self.pruners[side].keep_for(old.head_dim)
        self.stores[side] = CompressedStore(
            old.batch, old.heads, old.head_dim, old.dtype, old.device, keep=keep
        )

    def prune(self, obs: Observation) -> None:
        if self.policy.dense:  # nothing to compress: the tail is the whole (dense) cache
            return
        end = None if self.prunes else max(0, self.keys.shape[2] - self.policy.window)
        for side, tail in (("k", self.keys), ("v", self.values)):
            pruner = self.pruners[side]
            offset = pruner.final - self.stored  # tail index of this side's first undecided token
            n, mask = pruner.step(tail[:, :, offset:end], obs, want_mask=not pruner.packs_topk)
            store = self.stores[side]
            if pruner.order is not None and store.head_order is None:  # calibrated at prefill
                store.set_head_order(pruner.order[:, :, 0], checked=False)
            if n == 0:
                continue
            if mask is not None:
                tail[:, :, offset : offset + n].masked_fill_(~mask, 0)
            elif not pruner.packs_topk:
                mask = torch.ones_like(tail[:, :, offset : offset + n], dtype=torch.bool)
            self.pending[side].append((n, mask))
        self._flush()

    def _flush(self) -> None:
        """Move rows final on both sides into the stores; rows that must wait get their zeros applied now."""
        n = min(sum(c for c, _ in self.pending[side]) for side in ("k", "v"))
        for side, tail in (("k", self.keys), ("v", self.values)):
            queue, start = self.pending[side], 0
            while start < n:
                count, mask = queue[0]
                m = min(count, n - start)
                rows = tail[:, :, start : start + m]
                store = self.stores[side]
                if store.capacity < store.length + m:  # size a prefill's store once, with room to decode into
                    store.reserve(m + DECODE_HEADROOM)
                if mask is None:
                    topk_pack_into(store, rows, self.pruners[side].keep_for(rows.shape[-1]), kernel_backend())
                else:
                    pack_into(store, rows, mask[:, :, :m], kernel_backend())
                if m == count:
                    queue.popleft()
                else:
                    queue[0] = (count - m, None if mask is None else mask[:, :, m:])
                start += m
            for i, (count, mask) in enumerate(queue):  # waiting fused rows must look pruned to attention
                if mask is None:
                    lo = n + sum(c for c, _ in list(queue)[:i])
                    rows = tail[:, :, lo : lo + count]
                    keep = self.pruners[side].keep_for(rows.shape[-1])
                    mask = self.stores[side].kept_mask(rows.abs(), keep)
                    rows.masked_fill_(~mask, 0)
                    queue[i] = (count, mask)
        if n:  # copies: with one (row, head) the slice is contiguous, and a view would keep the whole prompt
            self.keys, self.values = self.keys[:, :, n:].clone(), self.values[:, :, n:].clone()

    def dense_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The logical cache as dense tensors (zeros at pruned entries): the reference path and tests."""
        k = torch.cat([self.stores["k"].to_dense(), self.keys], dim=2)
        v = torch.cat([self.stores["v"].to_dense(), self.values], dim=2)
        return k, v

    def nbytes(self, payload: bool = False) -> int:
        """Allocated bytes (capacity slack included), or only the stored tokens' bytes with `payload`."""
        tail = self.keys.numel() * self.keys.element_size() * 2
        attr = "payload_nbytes" if payload else "nbytes"
        return getattr(self.stores["k"], attr) + getattr(self.stores["v"], attr) + tail

    def row_payload_nbytes(self, b: int, pad: int) -> int:
        """`nbytes(payload=True)` of row `b` alone: its stored real tokens (bitmap popcount), the tokens it has
        decided on both sides that the batch still holds in the tail (alone, they would be stored), and the rest
        of its tail dense."""
        waiting, kept = self._row_waiting(b, pad)
        total = 0
        for side, store in self.stores.items():
            tokens = max(0, store.length - pad)
            row_keep = self._row_keep(side, b)
            if store.fixed or row_keep is not None:  # alone, the row's store has the fixed layout
                token = store.token_nbytes if store.fixed else fixed_token_nbytes(
                    store.head_dim, row_keep, store.itemsize, store.value_dtype
                )  # fmt: skip
                total += store.heads * (tokens + waiting) * token
                continue
            bits = store.bits[b, :, store.length - tokens : store.length]
            nnz = int(unpack_bitmap(bits, store.head_dim).sum()) + kept.get(side, 0)
            total += (
                store.heads * (tokens + waiting) * variable_token_nbytes(store.head_dim, 0, store.itemsize)
            )
            total += nnz * store.itemsize
        _, h, t, d = self.keys.shape
        tail_tokens = min(t, t + self.stored - pad) - waiting
        return total + 2 * h * tail_tokens * d * self.keys.element_size()

    def _row_keep(self, side: str, b: int) -> int | None:
        """The keep all of row `b`'s heads share under an allocation (alone, its store would have the fixed layout,
        whatever other rows of the batch keep), else None."""
        keeps = getattr(self.pruners[side], "keeps", None)  # [B, H]
        if keeps is None or not bool((keeps[b] == keeps[b, 0]).all()):
            return None
        return int(keeps[b, 0])

    def _row_waiting(self, b: int, pad: int) -> tuple[int, dict[str, int]]:
        """Row `b`'s real tokens that it has decided on both sides but the batch keeps in the tail, and each side's
        kept entries among them. Rules that start each row's groups at its own first token (`RowPruner`) release a
        column only once every row has decided it; a side with one pruner for the whole batch (a per-token rule, or
        no pruning) decides every row alike, so only its released columns count."""
        if not any(isinstance(p, RowPruner) for p in self.pruners.values()):
            return 0, {}
        kept = {}  # per side: kept entries of each tail column from the first unstored one, for row b
        for side in ("k", "v"):
            pruner = self.pruners[side]
            if isinstance(pruner, RowPruner) and pruner.decided is None:
                return 0, {}
            chunks = [self._column_kept(side, n, m, b) for n, m in self.pending[side]]
            if isinstance(pruner, RowPruner):  # then decided by this row alone
                chunks += [m.sum(dim=(0, 1, 3)) for m in pruner.decided[b]]
            kept[side] = (
                torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int64, device=self.keys.device)
            )
        ready = min(len(c) for c in kept.values())
        first = max(0, pad - self.stored)  # the row's pads are no tokens of it
        if ready <= first:
            return 0, {}
        return ready - first, {side: int(c[first:ready].sum()) for side, c in kept.items()}

    def _column_kept(self, side: str, n: int, mask: torch.Tensor | None, b: int) -> torch.Tensor:
        """Kept entries per column of row `b` in a pending chunk of `n` columns (None: the store packs the top-k)."""
        if mask is not None:
            return mask[b : b + 1].sum(dim=(0, 1, 3))
        keep = self.pruners[side].keep_for(self.stores[side].head_dim)
        return torch.full((n,), self.stores[side].heads * keep, dtype=torch.int64, device=self.keys.device)


@dataclass
class CacheStats:
    """Measured facts of one cache after generation (summed over layers)."""

    k_kept: int
    k_judged: int
    v_kept: int
    v_judged: int
    kv_bytes: int | None  # allocated compressed + dense-tail bytes (compressed mode only)
    kv_payload_bytes: int | None  # the same without capacity slack (what a perfectly sized store needs)
    dense_bytes: int  # the same tokens in a dense cache of the same dtype
    evicted_bytes: int = (
        0  # dense bytes of the prompt tokens evicted (kv.evict): not in the cache, not in dense_bytes
    )

    @property
    def k_sparsity(self) -> float | None:
        """1 − kept / judged of K; None while K has judged no token (it prunes nothing, or the prompt is still
        inside the window): result rows record that as 0."""
        return 1 - self.k_kept / self.k_judged if self.k_judged else None

    @property
    def v_sparsity(self) -> float | None:
        return 1 - self.v_kept / self.v_judged if self.v_judged else None


def side_counts(layers: list[MustafarLayer], side: str, counts: list[tuple[int, int]]) -> tuple[int, int]:
    """(kept, judged) of one side over `layers`, given each layer's own `counts`.

    A layer that a per-layer list leaves dense (entry 0) while other layers of the side prune judges nothing itself
    (its pruner takes every token as final at once). It counts as judging what the side's first pruned layer judged,
    with everything kept (all layers of a list share one schedule), so a list's measured sparsity is near its mean.
    Without the dense layers the measured sparsity would cover the pruned layers only."""
    active = [layer.rules[side].active for layer in layers]
    judged = next((c[1] for c, on in zip(counts, active) if on), 0)
    counts = [c if on else (judged, judged) for c, on in zip(counts, active)]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def add_stats(a: CacheStats, b: CacheStats) -> CacheStats:
    """Field-wise sum (byte counts stay None once either side lacks them)."""
    return CacheStats(
        k_kept=a.k_kept + b.k_kept,
        k_judged=a.k_judged + b.k_judged,
        v_kept=a.v_kept + b.v_kept,
        v_judged=a.v_judged + b.v_judged,
        kv_bytes=_add(a.kv_bytes, b.kv_bytes),
        kv_payload_bytes=_add(a.kv_payload_bytes, b.kv_payload_bytes),
        dense_bytes=a.dense_bytes + b.dense_bytes,
        evicted_bytes=a.evicted_bytes + b.evicted_bytes,
    )


class MustafarCache(Cache):
    """A `Cache` of pruning layers for `model.generate(past_key_values=...)`; attach it with `mustafar.attach` (or use `mustafar.prune`)."""

    def __init__(self, policy: KVConfig, num_layers: int):
        if not isinstance(policy, KVConfig):
            raise TypeError(
                f"a MustafarCache takes a KVConfig as its policy, got {type(policy).__name__} {policy!r}"
            )
        policy.check_layers(num_layers)
        layer_cls = MaskedLayer if policy.mode == "mask" else CompressedLayer
        super().__init__(layers=[layer_cls(policy, i) for i in range(num_layers)])
        self.policy = policy
        if policy.allocation != "uniform":
            allocator = Allocator(policy, self.layers)
            for layer in self.layers:
                layer.allocator = allocator

    def reset(self) -> None:
        """Empty the cache for another batch: every layer and, under an allocation, the allocator start afresh."""
        super().reset()
        if self.policy.allocation != "uniform":
            allocator = Allocator(self.policy, self.layers)
            for layer in self.layers:
                layer.allocator = allocator

    def set_padding(self, pads: list[int], device: torch.device | str = "cpu") -> None:
        """Declare the left-pad columns of each row before the prompt enters (`mustafar.generate` does this).

        Pad tokens then never enter pruning decisions or counts, and `row_stats` reports each row as if it had
        run alone. Without it every cached token counts as real.
        """
        bad = [p for p in pads if isinstance(p, bool) or not isinstance(p, int) or p < 0]
        if bad:
            raise ValueError(f"pad counts must be integers >= 0, got {bad[0]!r}")
        for layer in self.layers:
            layer.set_padding(pads, device)

    def row_stats(self) -> list[CacheStats]:
        """Per-row `stats()` of a (left-padded) batch: each row's real tokens only.

        kv_bytes (allocated, capacity slack included) is a property of the whole batch's stores, so it is only
        given for a batch of one; kv_payload_bytes is each row's own stored bytes.
        """
        layers = [layer for layer in self.layers if layer.is_initialized]
        if not layers:
            return []
        batch = layers[0].keys.shape[0]
        pads = layers[0].pads or [0] * batch
        compressed = self.policy.mode == "compressed"
        rows = []
        for b, pad in enumerate(pads):
            k_kept, k_judged = side_counts(
                layers, "k", [layer.pruners["k"].row_counts(batch)[b] for layer in layers]
            )
            v_kept, v_judged = side_counts(
                layers, "v", [layer.pruners["v"].row_counts(batch)[b] for layer in layers]
            )
            dense = sum(
                (layer.get_seq_length() - pad) * layer.keys.shape[1] * layer.keys.shape[3]
                * layer.keys.element_size() * 2
                for layer in layers
            )  # fmt: skip
            payload = sum(layer.row_payload_nbytes(b, pad) for layer in layers) if compressed else None
            allocated = sum(layer.nbytes() for layer in layers) if compressed and batch == 1 else None
            rows.append(
                CacheStats(
                    k_kept=k_kept,
                    k_judged=k_judged,
                    v_kept=v_kept,
                    v_judged=v_judged,
                    kv_bytes=allocated,
                    kv_payload_bytes=payload,
                    dense_bytes=dense,
                    evicted_bytes=sum(layer.evicted_bytes(b) for layer in layers),
                )
            )
        return rows

    def stats(self) -> CacheStats:
        layers = [layer for layer in self.layers if layer.is_initialized]
        first = layers[0] if layers else None
        if first is not None and first.pads is not None and first.evicted is None:
            # declared pads that leave a row no real token would make its counts negative
            first._check_pads(first.keys.shape[0], first.get_seq_length())
        k_kept, k_judged = side_counts(
            layers, "k", [(p.kept, p.judged) for p in (la.pruners["k"] for la in layers)]
        )
        v_kept, v_judged = side_counts(
            layers, "v", [(p.kept, p.judged) for p in (la.pruners["v"] for la in layers)]
        )
        dense = sum(
            layer.get_seq_length()
            * layer.keys.shape[0]
            * layer.keys.shape[1]
            * layer.keys.shape[3]
            * layer.keys.element_size()
            * 2
            for layer in layers
        )
        compressed = self.policy.mode == "compressed"
        kv_bytes = sum(layer.nbytes() for layer in layers) if compressed else None
        payload = sum(layer.nbytes(payload=True) for layer in layers) if compressed else None
        return CacheStats(
            k_kept=k_kept,
            k_judged=k_judged,
            v_kept=v_kept,
            v_judged=v_judged,
            kv_bytes=kv_bytes,
            kv_payload_bytes=payload,
            dense_bytes=dense,
            evicted_bytes=sum(layer.evicted_bytes() for layer in layers),
        )

    def prompt_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The [B, T] attention mask of the cached prompt after prefill: `mask`, or after eviction each row's
        survivors (right-aligned, its new pads 0). Decode steps extend this mask, not the prompt's."""
        layer = self.layers[0]
        if not getattr(layer, "evicted", None) or not any(layer.evicted):
            return mask
        n = layer.get_seq_length()
        pads = torch.tensor(layer.pads or [0] * mask.shape[0], device=mask.device)
        return (torch.arange(n, device=mask.device).unsqueeze(0) >= pads.unsqueeze(1)).to(mask.dtype)
