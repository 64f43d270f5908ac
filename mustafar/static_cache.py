"""Static-shape pruning caches: storage allocated once, every per-step index on the device.

A decode step through these layers launches the same kernels on the same buffers every time and never reads a
device value on the host, so the whole model step can be captured in a CUDA graph (`mustafar.graphs`). Prefill
stays eager and prunes/packs the prompt with the dynamic caches' code (`SidePruner`, the pack kernels).

- `StaticDenseLayer`: no pruning; K/V written in place into [B, H, capacity, D] (the fair dense baseline).
- `StaticMaskLayer`: the same storage; after each decode step the token leaving the window gets its per-token
  keep mask applied in place at a device-side index (what `MaskedLayer` does with a growing tensor).
- `StaticCompressedLayer`: final tokens live in fixed-layout `CompressedStore`s sized for the run; the window is
  a ring of window+1 dense slots (attention is order-free, so the ring needs no reordering). After each decode
  step the token leaving the window is top-k packed into the stores at a device-side offset.

Scope: per-token rules decide the token leaving the window from that token alone: magnitude directly,
output-aware from statistics summed over the token's steps in the window, kept per ring slot on the device
(values need the step's attention weights, so mask mode only). ThinK's prefill-only rule runs in mask mode.
Other policies (per-channel groups), and compressed mode with a prompt (or, padded, a row's real prompt) shorter
than the window (the sparse op has no window mask), use the dynamic caches: `static_cache` says so once and
returns a `MustafarCache`.
Left-padded batches (`set_padding`): the dense and mask layers mask each row's pad columns on the device and
never count them. The compressed layer never packs a pad: each row's stores hold only its real tokens, from
slot 0 (the per-row counts the sparse op decodes to), and every row's window is real (rows are at least a window
long), so the sparse op serves padded batches unchanged. ThinK with padding uses the dynamic caches.
"""

from __future__ import annotations

import inspect

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from mustafar.architectures import head_dim as config_head_dim
from mustafar.architectures import logit_softcap, text_config
from mustafar.cache import (
    CacheStats,
    MustafarCache,
    MustafarLayer,
    UnattachedCacheError,
    calibrated,
    kernel_backend,
    nm_group,
    nm_strided,
    side_counts,
    word_quota,
)
from mustafar.config import KVConfig, PruneRule
from mustafar.formats import CompressedStore, pack_bitmap, unpack_bitmap
from mustafar.formats.fp8 import dequantize, fake_quantize, quantize
from mustafar.kernels import pack_into, resolve_backend, sparse_decode_attention, topk_pack_into
from mustafar.kernels.support import warn_once
from mustafar.pruning import Observation, SidePruner, keep_mask, scores


def say_once(message: str) -> None:
    """One RuntimeWarning per distinct message per process (fallbacks are announced, not repeated per call)."""
    warn_once(message, RuntimeWarning, stacklevel=3)


class StaticCacheError(RuntimeError):
    pass


def _decides_per_token(rule: PruneRule) -> bool:
    return rule.direction == "token" and rule.scorer in ("magnitude", "output_aware")


def _output_aware(rule: PruneRule) -> bool:
    return rule.active and rule.direction == "token" and rule.scorer == "output_aware"


def unsupported_reason(
    policy: KVConfig, prompt_len: int, padded: bool = False, shortest: int | None = None
) -> str | None:
    """Why `policy` with a `prompt_len`-token prompt (left-padded rows when `padded`, the shortest with `shortest`
    real tokens) cannot use a static cache (None when it can)."""
    if policy.evict != "none":
        return f"kv.evict={policy.evict} shortens each row's cache at prefill; the static cache has fixed columns"
    if policy.dense:
        return None
    if policy.allocation != "uniform":
        return (
            f"kv.allocation={policy.allocation} decides each layer's keep from the whole prompt at prefill, "
            "after the static stores are sized"
        )
    if padded and any(rule.active and rule.scorer == "think" for rule in (policy.k, policy.v)):
        return "ThinK decides each padded row separately (per-row channel scores)"
    for side, rule in (("k", policy.k), ("v", policy.v)):
        if not rule.active or _decides_per_token(rule):
            continue
        if rule.scorer == "think" and policy.mode == "mask":
            continue  # prunes the prompt at prefill only; generated tokens stay dense
        return f"kv.{side}: {rule.label()} is not a per-token rule"
    if policy.mode == "compressed":
        if _output_aware(policy.v):
            return (
                "kv.v: output-aware values need attention weights, which the sparse decode op does not return"
            )
        for side, rule in (("k", policy.k), ("v", policy.v)):
            if rule.active and rule.scorer == "magnitude" and policy.side_keep_rule(side) == "reference":
                return (
                    f"kv.{side}: the published magnitude threshold keeps a varying count per token; "
                    "the static store needs a fixed count"
                )
        shortest = prompt_len if shortest is None else shortest
        if shortest < policy.window:
            row = "shortest row's prompt" if padded else "prompt"
            return f"the {row} ({shortest} tokens) is shorter than kv.window={policy.window}"
    return None


def masked_decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(scale·q·Kᵀ)·V for one query per row over the `valid` [T] slots of K/V [B, H_kv, T, D] (GQA), and
    each slot's attention summed over the group's query heads [B, H_kv, T] (the output-aware value statistic).
    `valid` is [T] or, with per-row pads, [B, 1, 1, T].

    Two batched GEMVs: no key/value head repetition, fixed shapes, so it captures in a graph."""
    b, hq, d = q.shape
    hkv = keys.shape[1]
    qg = q.reshape(b, hkv, hq // hkv, d)
    logits = torch.matmul(qg, keys.transpose(-1, -2)).float() * scale
    probs = logits.masked_fill(~valid, float("-inf")).softmax(dim=-1)
    return torch.matmul(probs.to(values.dtype), values).reshape(b, hq, d), probs.sum(dim=2)


class StaticLayer(MustafarLayer):
    """Common part: capacity, the device length and its host mirror, prefill through the dynamic schedule."""

    def __init__(self, policy: KVConfig, capacity: int, layer_idx: int = 0):
        super().__init__(policy, layer_idx)
        self.capacity = capacity
        self.host_length = 0  # host mirror of `length`; `mustafar.graphs` advances it for replayed steps

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.batch, self.heads = b, h
        self.dtype, self.device = key_states.dtype, key_states.device
        self.length = torch.zeros((), dtype=torch.long, device=self.device)
        self.output_aware = {s: _output_aware(self.pruners[s].rule) for s in ("k", "v")}
        self.allocate(b, h, d)
        if any(self.output_aware.values()):  # per ring slot: statistics summed over the steps in the window
            w = self.policy.window + 1
            self.acc = {
                "k": torch.zeros(b, h, w, d, dtype=torch.float32, device=self.device),
                "v": torch.zeros(b, h, w, dtype=torch.float32, device=self.device),
            }
            self.cnt = torch.zeros(w, dtype=torch.float32, device=self.device)
        self.is_initialized = True

    def allocate(self, batch: int, heads: int, head_dim: int) -> None:
        raise NotImplementedError

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.bound:
            raise UnattachedCacheError(
                "this static cache is not attached to the model: use it inside `mustafar.attach(model, cache)`"
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[2]
        if self.host_length + n > self.capacity:
            raise StaticCacheError(
                f"static cache capacity {self.capacity} exceeded: {self.host_length} cached + {n} new tokens"
            )
        if self.host_length == 0:
            self.host_length = n
            self.length.fill_(n)
            self.write_prompt(key_states, value_states)
            return key_states, value_states
        if n != 1:
            raise StaticCacheError(
                f"a static cache takes one prompt, then one token per step; got {n} tokens"
            )
        out = self.write_token(key_states, value_states)
        self.length += 1
        self.host_length += 1
        return out

    def get_seq_length(self) -> int:
        return self.host_length

    def advance(self, steps: int) -> None:
        """Account on the host for `steps` decode steps a graph replay ran on the device."""
        self.host_length += steps

    def reset(self) -> None:
        """Forget the batch for the next one of the same shape: host counters and pruners start afresh, every
        buffer is zeroed in place (a captured graph keeps reading the same addresses), padding is undeclared."""
        self.host_length = 0
        self.rounded = 0
        self.pruners = {
            s: SidePruner(rule, s, self.policy.side_keep_rule(s), self.policy.window)
            for s, rule in self.rules.items()
        }
        self.pads = None  # `pad_columns` stays: the buffer `set_padding` refills
        for value in list(vars(self).values()):
            for item in value.values() if isinstance(value, dict) else (value,):
                if isinstance(item, torch.Tensor):
                    item.zero_()
                elif isinstance(item, CompressedStore):
                    item.reset()
                    for buf in (item.bits, item.vals, *((item.scales,) if item.fp8 else ())):
                        buf.zero_()

    def set_padding(self, pads: list[int], device: torch.device | str) -> None:
        held = self.pad_columns
        super().set_padding(pads, device)
        if held is not None and held.shape == self.pad_columns.shape:  # refill the buffer a graph may read
            held.copy_(self.pad_columns)
            self.pad_columns = held
            for pruner in self.pruners.values():
                if isinstance(pruner, SidePruner) and pruner.pads is not None:
                    pruner.pads = held

    @property
    def needs(self) -> set[str]:
        return super().needs if not self.pruners["k"].prefilled else set()

    def attend(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
        scaling: float,
    ) -> torch.Tensor:
        """Attention output [B, q, H_q, D]: the prompt attends densely, a decode step over the static storage."""
        if not self.pruners["k"].prefilled:
            out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling)
            return out
        out, attention = self.decode_attention(query[:, :, 0], scaling)
        if any(self.output_aware.values()):
            self.accumulate(query, attention)
        return out.unsqueeze(1)

    def after_attention(self, obs: Observation) -> None:
        if not self.pruners["k"].prefilled:
            self.prune_prompt(obs)
            if any(self.output_aware.values()):
                self.seed_window_statistics()
        else:
            self.prune_leaving()

    def ring_slots(self) -> torch.Tensor:
        """Position of the token in each of the window+1 ring slots after this step's write (< 0: none yet)."""
        w = self.policy.window + 1
        base = self.length - w  # the oldest position the ring holds
        return base + (torch.arange(w, device=self.device) - base) % w

    def seed_window_statistics(self) -> None:
        """The prompt's window tokens carry their prefill statistics into the ring (as the pruners hold them)."""
        w = self.policy.window + 1
        for side in ("k", "v"):
            pruner = self.pruners[side]
            if self.output_aware[side]:
                slots = torch.arange(pruner.final, self.host_length, device=self.device) % w
                self.acc[side].index_copy_(2, slots, pruner.acc)
                self.cnt.index_copy_(0, slots, pruner.cnt)

    def accumulate(self, query: torch.Tensor, attention: torch.Tensor | None) -> None:
        """Add this step's statistics to every token in the window, the new one included (fresh slot)."""
        w = self.policy.window + 1
        new = ((self.length - 1) % w).view(1)
        positions = self.ring_slots()
        inside = (positions >= 0).float()
        self.cnt.index_fill_(0, new, 0)
        for side in ("k", "v"):
            if not self.output_aware[side]:
                continue
            self.acc[side].index_fill_(2, new, 0)
            if side == "k":
                stat = scores.query_stat(query, self.heads).unsqueeze(2)
                self.acc["k"] += stat * inside.view(1, 1, w, 1)
            else:
                self.acc["v"] += self.window_attention(attention, positions) * inside
        self.cnt += inside

    def window_attention(self, attention: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Attention [B, H_kv, window+1] of the ring slots' tokens, from the step's attention over all slots."""
        return attention.index_select(2, positions.clamp_min(0))

    def leaving_score(self, side: str, row: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The score ranking the entries of the token leaving the window (`slot` [1] in the ring)."""
        if not self.output_aware[side]:
            return scores.magnitude(row)
        cnt = self.cnt.index_select(0, slot).clamp_min(1)
        if side == "k":
            return scores.key_output_aware(row, self.acc["k"].index_select(2, slot) / cnt.view(1, 1, 1, 1))
        return scores.value_output_aware(row, self.acc["v"].index_select(2, slot) / cnt.view(1, 1, 1))

    def valid(self) -> torch.Tensor:
        """Slots a decode query attends to: [capacity], or [B, 1, 1, capacity] with left pads masked per row
        (derived on the device from the fixed pad counts, so a captured graph masks them at every replay)."""
        columns = torch.arange(self.capacity, device=self.device)
        filled = columns < self.length
        if self.pad_columns is None:
            return filled
        return (filled & (columns >= self.pad_columns.view(-1, 1))).view(self.batch, 1, 1, self.capacity)

    def real_decided(self, row: int, side: str) -> int:
        """Row `row`'s real tokens (pads excluded) made final by decode steps: columns [prompt final,
        length - window) from its first real column on."""
        pad = self.pads[row] if self.pads else 0
        start = max(self.pruners[side].final, pad)
        return max(0, self.host_length - self.policy.window - start)

    def decode_attention(self, q: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output [B, H_q, D] and, where available, each slot's attention [B, H_kv, slots]."""
        raise NotImplementedError

    def write_prompt(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        raise NotImplementedError

    def write_token(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def prune_prompt(self, obs: Observation) -> None:
        raise NotImplementedError

    def prune_leaving(self) -> None:
        pass

    def decode_counts(self) -> dict[str, tuple[int, int]]:
        """(kept, judged) entries per side decided by decode steps (prefill's are in the pruners)."""
        rows = [self.row_decode_counts(b) for b in range(self.batch)]
        return {s: (sum(r[s][0] for r in rows), sum(r[s][1] for r in rows)) for s in ("k", "v")}

    def row_decode_counts(self, row: int) -> dict[str, tuple[int, int]]:
        """(kept, judged) entries of row `row` decided by decode steps, pads excluded (none for dense)."""
        return {"k": (0, 0), "v": (0, 0)}

    def dense_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class StaticDenseLayer(StaticLayer):
    """K/V in [B, H, capacity, D] buffers; the new token is written at the device length."""

    def allocate(self, batch: int, heads: int, head_dim: int) -> None:
        shape = (batch, heads, self.capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def write_prompt(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys[:, :, : keys.shape[2]] = keys
        self.values[:, :, : keys.shape[2]] = values

    def write_token(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        at = self.length.view(1)
        self.keys.index_copy_(2, at, keys)
        self.values.index_copy_(2, at, values)
        return self.keys, self.values

    def decode_attention(self, q: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_decode_attention(q, self.keys, self.values, self.valid(), scale)

    def prune_prompt(self, obs: Observation) -> None:
        for side, tensor in (("k", self.keys), ("v", self.values)):
            n, mask = self.pruners[side].step(tensor[:, :, : self.host_length], obs)
            if mask is not None:
                tensor[:, :, :n].masked_fill_(~mask, 0)
        self.round_stored()

    def dense_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[:, :, : self.host_length], self.values[:, :, : self.host_length]

    def row_payload_nbytes(self, row: int) -> int:
        """Row `row`'s real tokens, dense (a dense policy in compressed mode stores nothing compressed)."""
        pad = self.pads[row] if self.pads else 0
        _, h, _, d = self.keys.shape
        return 2 * h * max(0, self.host_length - pad) * d * self.keys.element_size()

    def nbytes(self, payload: bool = False) -> int:
        if payload:
            return sum(self.row_payload_nbytes(b) for b in range(self.batch))
        return self.keys.numel() * self.keys.element_size() * 2


class StaticMaskLayer(StaticDenseLayer):
    """Pruned entries are zeros in the static buffers; the token leaving the window is pruned in place."""

    def allocate(self, batch: int, heads: int, head_dim: int) -> None:
        super().allocate(batch, heads, head_dim)
        self.decode_kept = {s: torch.zeros(batch, dtype=torch.long, device=self.device) for s in ("k", "v")}
        # calibrated N:M sides: each (row, head)'s channel order, refilled in place at every prefill (a captured
        # decode step keeps reading this buffer's address across batches)
        self.orders = {
            s: torch.zeros(batch, heads, 1, head_dim, dtype=torch.int64, device=self.device)
            for s in ("k", "v")
            if calibrated(self.policy, s)
        }

    def prune_prompt(self, obs: Observation) -> None:
        super().prune_prompt(obs)
        for side, order in self.orders.items():
            order.copy_(self.pruners[side].order)

    def prune_leaving(self) -> None:
        leaving = self.length - 1 - self.policy.window
        inside = leaving >= 0  # a prompt shorter than the window: nothing has left it yet
        counted = inside if self.pad_columns is None else inside & (leaving >= self.pad_columns)  # [B]: real
        at = leaving.clamp_min(0).view(1)
        slot = (self.length % (self.policy.window + 1)).view(1)
        fp8 = self.policy.value_dtype == "fp8"
        for side, tensor in (("k", self.keys), ("v", self.values)):
            rule = self.pruners[side].rule
            pruned = rule.active and _decides_per_token(rule)
            if not (pruned or fp8):
                continue
            row = tensor.index_select(2, at)
            if pruned:
                score = self.leaving_score(side, row, slot)
                thresholded = rule.scorer == "magnitude"
                rule_name, order = self.policy.side_keep_rule(side), self.orders.get(side)
                keep = keep_mask(score, rule.sparsity, rule_name, thresholded, order=order)
                row = row.masked_fill(~keep & inside, 0)
                self.decode_kept[side] += torch.where(counted, keep.sum(dim=(1, 2, 3)), 0)
            if fp8:  # the stores' rounding, once the token has left the window
                row = torch.where(inside.view(-1, 1, 1, 1), fake_quantize(row), row)
            tensor.index_copy_(2, at, row)

    def row_decode_counts(self, row: int) -> dict[str, tuple[int, int]]:
        counts = {}
        _, h, _, d = self.keys.shape
        for side in ("k", "v"):
            rule = self.pruners[side].rule
            if not (rule.active and _decides_per_token(rule)):
                counts[side] = (0, 0)
                continue
            counts[side] = (int(self.decode_kept[side][row]), self.real_decided(row, side) * h * d)
        return counts


class StaticCompressedLayer(StaticLayer):
    """Fixed-layout stores sized for the run plus a ring of window+1 dense slots."""

    def allocate(self, batch: int, heads: int, head_dim: int) -> None:
        w = self.policy.window + 1
        self.ring_k = torch.zeros(batch, heads, w, head_dim, dtype=self.dtype, device=self.device)
        self.ring_v = torch.zeros_like(self.ring_k)
        self.keep = {s: self.pruners[s].keep_for(head_dim) for s in ("k", "v")}
        triton = resolve_backend(kernel_backend(), self.device, head_dim) == "triton"
        # masked (output-aware) packs at a device offset exist only in PyTorch here: those stay host-counted
        self.device_stores = triton and _stores_count_on_device() and not any(self.output_aware.values())
        extra = {"static": True} if self.device_stores else {}
        self.stores = {
            s: CompressedStore(
                batch,
                heads,
                head_dim,
                self.dtype,
                self.device,
                self.keep[s],
                capacity=self.capacity,
                word_quota=word_quota(self.policy, s),
                nm_group=nm_group(self.policy, s),
                nm_strided=nm_strided(self.policy, s),
                value_dtype=self.policy.value_dtype,
                **extra,
            )
            for s in ("k", "v")
        }
        # calibrated groups: an order held from here on, refilled in place at each prefill
        identity = torch.arange(head_dim, device=self.device).expand(batch, heads, head_dim)
        for side, store in self.stores.items():
            if calibrated(self.policy, side):
                store.set_head_order(identity, checked=False)
        self.stored = torch.zeros(batch, dtype=torch.long, device=self.device)  # tokens in each row's stores
        self.prompt_stored = 0

    def write_prompt(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        t, w = keys.shape[2], self.policy.window
        if t < w:
            raise StaticCacheError(f"static compressed cache needs a prompt of >= window={w} tokens, got {t}")
        self.prompt = (keys, values)  # until the prompt's pruning has run
        slots = torch.arange(t - w, t, device=self.device) % (w + 1)
        self.ring_k.index_copy_(2, slots, keys[:, :, t - w :])
        self.ring_v.index_copy_(2, slots, values[:, :, t - w :])

    def write_token(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slot = (self.length % (self.policy.window + 1)).view(1)
        self.ring_k.index_copy_(2, slot, keys)
        self.ring_v.index_copy_(2, slot, values)
        return self.ring_k, self.ring_v

    def prune_prompt(self, obs: Observation) -> None:
        """Pack the prompt's columns that leave the window, each row's real ones from its slot 0 (pads never)."""
        n = self.host_length - self.policy.window
        pads = self.pad_columns if self.pad_columns is not None else torch.zeros_like(self.stored)
        counts = n - pads  # >= 0: every row is at least a window long (see scope)
        for side, prompt in zip(("k", "v"), self.prompt):
            _, mask = self.pruners[side].step(prompt, obs, want_mask=False)  # the schedule and its counts
            if self.pruners[side].order is not None:  # this prompt's calibrated groups, in place
                self.stores[side].set_head_order(self.pruners[side].order[:, :, 0], checked=False)
            if n > 0:  # a prompt exactly a window long leaves nothing to pack (and output-aware has no mask)
                self._pack_prompt(side, left_align(prompt[:, :, :n], pads), mask, pads)
            if self.device_stores:  # the pack advanced every row by n: count only each row's real tokens
                self.stores[side].length_tensor.copy_(counts)
        del self.prompt
        self.prompt_stored = n  # columns packed at prefill (pads included in the count, not in the stores)
        self.stored.copy_(counts)

    def _pack_prompt(
        self, side: str, rows: torch.Tensor, mask: torch.Tensor | None, pads: torch.Tensor
    ) -> None:
        """Pack one side's left-aligned prompt columns: by the output-aware mask, whole for a side kept whole, or
        by the store's fused top-k."""
        store, keep = self.stores[side], self.keep[side]
        if self.output_aware[side]:
            pack_into(store, rows, left_align(mask, pads), kernel_backend())
        elif keep == rows.shape[-1]:
            pack_into(store, rows, torch.ones_like(rows, dtype=torch.bool), kernel_backend())
        else:
            topk_pack_into(store, rows, keep, kernel_backend())

    def prune_leaving(self) -> None:
        slot = (self.length % (self.policy.window + 1)).view(1)  # holds token length-1-window
        for side, ring in (("k", self.ring_k), ("v", self.ring_v)):
            row = ring.index_select(2, slot)
            if self.device_stores:  # the Triton pack writes at the store's device length and advances it
                topk_pack_into(self.stores[side], row, self.keep[side], kernel_backend())
                continue
            score = self.leaving_score(side, row, slot)
            store = self.stores[side]
            mask = store.kept_mask(score, self.keep[side])
            pack_token_at(store, row, self.keep[side], self.stored, mask)  # at each row's count
            store.length += 1  # host mirror: the widest row's count
        self.stored += 1

    def advance(self, steps: int) -> None:
        super().advance(steps)
        if not self.device_stores:
            for store in self.stores.values():
                store.length += steps

    def decode_attention(self, q: torch.Tensor, scale: float) -> tuple[torch.Tensor, None]:
        return compressed_decode_attention(q, self, scale), None

    def row_decode_counts(self, row: int) -> dict[str, tuple[int, int]]:
        ks = self.stores["k"]
        tokens = (self.host_length - self.policy.window - self.prompt_stored) * ks.heads  # all real rows
        counts = {}
        for side in ("k", "v"):
            active = self.pruners[side].rule.active
            counts[side] = (tokens * self.keep[side], tokens * ks.head_dim) if active else (0, 0)
        return counts

    def window_order(self) -> torch.Tensor:
        """Ring slots of the window's tokens, oldest first (host-side: tests and the reference path)."""
        w = self.policy.window
        return torch.arange(self.host_length - w, self.host_length, device=self.device) % (w + 1)

    def dense_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The logical cache [B, H, length, D], every token at its column (a row's pad columns are zeros)."""
        order = self.window_order()
        n = self.host_length - self.policy.window  # tokens that have left the window
        views = []
        for side, ring in (("k", self.ring_k), ("v", self.ring_v)):
            stored = unpack_fixed(self.stores[side])[:, :, :n]
            if self.pads:
                stored = column_align(stored, self.pad_columns)
            views.append(torch.cat([stored, ring[:, :, order]], dim=2))
        return views[0], views[1]

    def row_tokens(self, row: int) -> int:
        """Tokens row `row` holds in its stores: its real tokens that have left the window."""
        pad = self.pads[row] if self.pads else 0
        return max(0, self.host_length - self.policy.window - pad)

    def row_payload_nbytes(self, row: int) -> int:
        """Row `row`'s stored tokens (fixed layout) and its real tokens in the window, dense: the ring's spare
        slot holds a token already stored, and a short row's empty slots hold nothing (as the dynamic cache's tail)."""
        tokens = self.row_tokens(row)
        stores = sum(st.heads * tokens * st.token_nbytes for st in self.stores.values())
        pad = self.pads[row] if self.pads else 0
        live = min(self.policy.window, max(0, self.host_length - pad))
        _, h, _, d = self.ring_k.shape
        return stores + 2 * h * live * d * self.ring_k.element_size()

    def nbytes(self, payload: bool = False) -> int:
        if payload:
            return sum(self.row_payload_nbytes(b) for b in range(self.batch))
        ring = self.ring_k.numel() * self.ring_k.element_size() * 2
        return self.stores["k"].nbytes + self.stores["v"].nbytes + ring


def unpack_fixed(store: CompressedStore) -> torch.Tensor:
    """A fixed-layout store's whole capacity as dense [B, H, capacity, D] in channel order (zeros where nothing is
    stored); fixed shapes, unlike `CompressedStore.to_dense`, so it captures in a graph."""
    mask = unpack_bitmap(store.bits, store.head_dim)
    rank = (mask.to(torch.int64).cumsum(-1) - 1).clamp(0, store.slot - 1)
    vals = dequantize(store.vals, store.scales, store.dtype) if store.fp8 else store.vals
    return store.to_channels(vals.gather(-1, rank).masked_fill(~mask, 0))


def pack_token_at(
    store: CompressedStore, row: torch.Tensor, keep: int, at: torch.Tensor, mask: torch.Tensor | None = None
) -> None:
    """`row` [B, H, 1, D] under `mask` (both in channel order; `keep` entries per token; default: top-`keep` by
    |x|, ties to the lower channel, per word on a `word_quota` store, per consecutive or strided group on an
    `nm_group` one) into fixed-layout slot `at` (device: [1] for every batch row, or [B], one slot per row). The
    layout equals `pack_into`'s (stored order); the slot index stays on the device (capturable)."""
    if mask is None:
        mask = store.kept_mask(row.abs(), keep)
    row, mask = store.to_stored(row), store.to_stored(mask)
    kept_channels = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[..., :keep]
    kept = row.gather(-1, kept_channels)
    b, h = row.shape[:2]
    slot = at.to(torch.int64).view(-1, 1, 1, 1)
    if store.fp8:
        kept, scale = quantize(kept)
        store.scales.scatter_(2, slot.view(-1, 1, 1).expand(b, h, 1), scale)
    vals = torch.zeros(*row.shape[:3], store.slot, dtype=store.vals.dtype, device=row.device)
    vals[..., :keep] = kept
    store.bits.scatter_(2, slot.expand(b, h, 1, store.bits.shape[3]), pack_bitmap(mask))
    store.vals.scatter_(2, slot.expand(b, h, 1, store.slot), vals)


def _columns(x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """x[b, :, columns[b, j]] for x [B, H, n, ...] and columns [B, n] (device gather: fixed shapes)."""
    b, h, n = x.shape[:3]
    index = columns.view(b, 1, n, *([1] * (x.dim() - 3))).expand(b, h, n, *x.shape[3:])
    return x.gather(2, index)


def left_align(x: torch.Tensor, pads: torch.Tensor) -> torch.Tensor:
    """Row b of x [B, H, n, ...] shifted left by its `pads[b]` columns: its real columns from index 0. The tail
    repeats the last column (any complete token does: it lies past the row's count and is never read)."""
    n = x.shape[2]
    if n == 0:
        return x
    columns = (torch.arange(n, device=x.device) + pads.view(-1, 1)).clamp_max(n - 1)
    return _columns(x, columns)


def column_align(x: torch.Tensor, pads: torch.Tensor) -> torch.Tensor:
    """The inverse of `left_align`: row b's tokens back at columns [pads[b], n), zeros in its pad columns."""
    n = x.shape[2]
    columns = torch.arange(n, device=x.device) - pads.view(-1, 1)
    out = _columns(x, columns.clamp_min(0))
    return out.masked_fill((columns < 0).view(*columns.shape[:1], 1, n, *([1] * (x.dim() - 3))), 0)


def _stores_count_on_device() -> bool:
    """Whether `CompressedStore` offers static stores (`static=True`: token count in a device tensor that the
    Triton pack advances and the sparse decode op reads, one launch plan per capacity)."""
    return "static" in inspect.signature(CompressedStore.__init__).parameters


def compressed_decode_attention(q: torch.Tensor, layer: StaticCompressedLayer, scale: float) -> torch.Tensor:
    """The one place the static compressed cache calls the sparse decode op.

    PyTorch backend: dense attention over the unpacked stores and the ring (fixed shapes, capturable). Triton
    with static stores: the sparse op reads the length on the device (capturable). Triton without them: the op
    reads the host mirror `store.length`, right eagerly but frozen in a captured graph (`capture_blocker`); with
    left-padded rows that one host count would overread the shorter rows, so those take the PyTorch path (only
    output-aware keys have no device-counted stores)."""
    ks, vs = layer.stores["k"], layer.stores["v"]
    host_counted_pads = not layer.device_stores and any(layer.pads or ())
    if host_counted_pads or resolve_backend(kernel_backend(), q.device, q.shape[-1]) == "torch":
        keys = torch.cat([unpack_fixed(ks), layer.ring_k], dim=2)
        values = torch.cat([unpack_fixed(vs), layer.ring_v], dim=2)
        b, w = q.shape[0], layer.ring_k.shape[2]
        in_store = torch.arange(layer.capacity, device=q.device) < layer.stored.view(b, 1)  # each row's count
        valid = torch.cat([in_store, torch.ones(b, w, dtype=torch.bool, device=q.device)], dim=1)
        return masked_decode_attention(q, keys, values, valid.view(b, 1, 1, -1), scale)[0]
    return sparse_decode_attention(
        q, ks, vs, layer.ring_k, layer.ring_v, scale=scale, backend=kernel_backend()
    )


def capture_blocker(cache: StaticMustafarCache, device: torch.device) -> str | None:
    """Why a decode step through `cache` cannot be captured in a CUDA graph on `device` (None when it can)."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, the model is on {device.type}"
    compressed = [layer for layer in cache.layers if isinstance(layer, StaticCompressedLayer)]
    if compressed and resolve_backend(kernel_backend(), device, cache.head_dim) == "triton":
        if not _stores_count_on_device():
            return "the sparse decode op reads the store length on the host (no static CompressedStore yet)"
        # what StaticCompressedLayer.allocate decides for `device_stores`, known before the prompt allocates it
        if any(_output_aware(rule) for rule in (cache.policy.k, cache.policy.v)):
            return "output-aware keys are packed by a PyTorch op at a host-counted store length"
    return None


class StaticMustafarCache(MustafarCache):
    """A `MustafarCache` of static layers sized for `capacity` tokens (prompt + max_new_tokens)."""

    def __init__(self, policy: KVConfig, num_layers: int, capacity: int, head_dim: int):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        # what the constructor itself cannot honour (the rest is the caller's check: prompt lengths, padding)
        fixed = policy.evict != "none" or (policy.allocation != "uniform" and not policy.dense)
        reason = unsupported_reason(policy, 1) if fixed else None
        if reason:
            raise ValueError(f"no static cache for this policy: {reason}")
        if policy.dense:
            layer_cls = StaticDenseLayer
        else:
            layer_cls = StaticMaskLayer if policy.mode == "mask" else StaticCompressedLayer
        policy.check_layers(num_layers)
        layers = [layer_cls(policy, capacity, i) for i in range(num_layers)]
        super(MustafarCache, self).__init__(layers=layers)
        self.policy, self.capacity, self.head_dim = policy, capacity, head_dim

    def advance(self, steps: int = 1) -> None:
        for layer in self.layers:
            layer.advance(steps)

    @torch.inference_mode()  # generate allocates the buffers as inference tensors: zeroed in place only in it
    def reset(self) -> None:
        """Empty the cache for another batch of the same size, keeping every buffer (and so a captured graph)."""
        for layer in self.layers:
            layer.reset()

    def row_stats(self) -> list[CacheStats]:
        """Per-row `stats()`: each row's real tokens only, the counts `MustafarCache.row_stats` gives.

        kv_bytes (allocated, capacity slack included) only for a batch of one; kv_payload_bytes is each row's own
        stored tokens and its share of the ring."""
        layers = [layer for layer in self.layers if layer.is_initialized]
        if not layers:
            return []
        batch = layers[0].batch
        compressed = self.policy.mode == "compressed"  # a dense policy's layers too: their bytes are dense
        rows = []
        for b, pad in enumerate(layers[0].pads or [0] * batch):
            kept, judged = {}, {}
            decode = [layer.row_decode_counts(b) for layer in layers]
            for side in ("k", "v"):
                prefill = [layer.pruners[side].row_counts(batch)[b] for layer in layers]
                counts = [(p[0] + d[side][0], p[1] + d[side][1]) for p, d in zip(prefill, decode)]
                kept[side], judged[side] = side_counts(layers, side, counts)
            dense = sum(
                (layer.host_length - pad) * layer.heads * self.head_dim * layer.dtype.itemsize * 2
                for layer in layers
            )
            payload = sum(layer.row_payload_nbytes(b) for layer in layers) if compressed else None
            rows.append(
                CacheStats(
                    k_kept=kept["k"],
                    k_judged=judged["k"],
                    v_kept=kept["v"],
                    v_judged=judged["v"],
                    kv_bytes=sum(layer.nbytes() for layer in layers) if compressed and batch == 1 else None,
                    kv_payload_bytes=payload,
                    dense_bytes=dense,
                )
            )
        return rows

    def stats(self) -> CacheStats:
        layers = [layer for layer in self.layers if layer.is_initialized]
        kept, judged = {}, {}
        decode = [layer.decode_counts() for layer in layers]
        for side in ("k", "v"):
            pruners = [layer.pruners[side] for layer in layers]
            counts = [(p.kept + d[side][0], p.judged + d[side][1]) for p, d in zip(pruners, decode)]
            kept[side], judged[side] = side_counts(layers, side, counts)
        dense = sum(
            layer.host_length * layer.batch * layer.heads * self.head_dim * layer.dtype.itemsize * 2
            for layer in layers
        )
        compressed = bool(layers) and self.policy.mode == "compressed"
        return CacheStats(
            k_kept=kept["k"],
            k_judged=judged["k"],
            v_kept=kept["v"],
            v_judged=judged["v"],
            kv_bytes=sum(layer.nbytes() for layer in layers) if compressed else None,
            kv_payload_bytes=sum(layer.nbytes(payload=True) for layer in layers) if compressed else None,
            dense_bytes=dense,
        )


def _model_reason(cfg) -> str | None:
    """Model traits the static layers do not implement: they attend by SDPA over every cached token."""
    cfg = text_config(cfg)
    if logit_softcap(cfg):
        return "attention logit soft-capping"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "layer_types", None) != ["full_attention"] * len(
        getattr(cfg, "layer_types", None) or []
    ):
        return "sliding-window attention layers"
    return None


def static_reason(
    model: torch.nn.Module,
    policy: KVConfig,
    prompt_len: int,
    padded: bool = False,
    shortest: int | None = None,
) -> str | None:
    """Why a static cache cannot serve `policy` on `model` for this prompt width (None when it can)."""
    return unsupported_reason(policy, prompt_len, padded, shortest) or _model_reason(model.config)


def announce_fallback(reason: str) -> None:
    say_once(f"mustafar: static cache unavailable ({reason}); using the dynamic cache")


def static_cache(
    model: torch.nn.Module,
    policy: KVConfig,
    prompt_len: int,
    max_new_tokens: int,
    padded: bool = False,
    shortest: int | None = None,
    capacity: int | None = None,
) -> MustafarCache:
    """A static cache for prompts `prompt_len` tokens wide (left-padded rows when `padded`, the shortest with
    `shortest` real tokens) and `max_new_tokens` decode steps, or, outside the static scope, the dynamic
    `MustafarCache` (announced once per reason). `capacity` (default: exactly prompt + new tokens) may be larger,
    so that one cache serves several batches (`mustafar.runner_pool`)."""
    reason = static_reason(model, policy, prompt_len, padded, shortest)
    cfg = text_config(model.config)  # a multimodal checkpoint's decoder (Gemma-3 nests it)
    if reason is not None:
        announce_fallback(reason)
        return MustafarCache(policy, num_layers=cfg.num_hidden_layers)
    need = prompt_len + max_new_tokens
    if capacity is not None and capacity < need:
        raise ValueError(f"capacity={capacity} is below prompt + new tokens = {need}")
    return StaticMustafarCache(policy, cfg.num_hidden_layers, capacity or need, config_head_dim(cfg))
