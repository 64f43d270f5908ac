"""When tokens are pruned, and with which pattern, for one side (K or V) of one cache layer.

Storage-agnostic: the cache layer hands over its dense tail (the tokens whose pattern is not final yet) after
each attention call and applies the masks it gets back, zeroing entries (mask mode) or packing them (compressed
mode). Schedule (docs/method.md §1): prefill attention is dense; afterwards every token but the last `window` is
pruned; during decode a step attends over window+1 dense tokens and the oldest leaves the window afterwards.

Per-channel rules follow the published code (dhjoo98/mustafar, models/llama_mustafar_Kt_Mag_Vc_*.py):
- output-aware ranks each channel over the whole prompt at prefill, because the attention weights of the last
  32 prompt queries differ by orders of magnitude between tokens: a per-group quota (16 of 32 at s = 0.5) keeps
  entries of unattended groups and drops whole value rows inside attended ones, close to token eviction. The
  ranking covers the prompt tokens outside the window (`exact`) or, as the published code does, every prompt
  token with no window (`reference`); it keeps round((1-s)·n) resp. int(n·(1-s)) of the n ranked tokens per
  channel. Later tokens form 32-token groups that start at the first token the ranking left out.
- magnitude uses 32-token groups aligned to position 0 from prefill on (the published code ranks no whole
  prompt for it: its prefill prunes the complete groups outside the window, the remainder waits).
A group is pruned once all its tokens have left the window.
ThinK prunes the whole prompt at prefill (no window) and leaves generated tokens dense, like its reference.

Left-padded batches (`mustafar.generate`): every row must be pruned exactly as if it ran alone. Rows end at the
same column, so per-token rules decide the same columns for every row and only need pad columns kept out of the
counts (`SidePruner.pads`). Per-channel rules and ThinK depend on where a row starts (32-token groups from its
own first token, ranking over its own prompt), so `RowPruner` runs one `SidePruner` per row on that row's
unpadded tokens and releases a column to the cache once every row has decided it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mustafar.config import CHANNEL_GROUP, PruneRule
from mustafar.pruning import scores
from mustafar.pruning.keep import (
    CALIBRATED_GROUPS,
    NM_GROUPS,
    balanced_groups,
    exact_keep,
    head_topk_mask,
    keep_mask,
    reference_think_keep,
    reference_topk_keep,
    topk_mask,
)

# prompt tokens per step of the calibration's magnitude sum (one step up to 4K tokens)
CALIBRATION_CHUNK = 4096


@dataclass
class Observation:
    """What one attention call tells the pruners (only the parts some pruner asked for are set)."""

    q_len: int
    query_stat: torch.Tensor | None = None  # [B, H_kv, D]
    think_query_stat: torch.Tensor | None = None  # [B, H_kv, D]
    attention_stat: torch.Tensor | None = None  # [B, H_kv, T] over all cached tokens

    def row(self, b: int, pad: int, total: int) -> Observation:
        """What row `b` alone (its `pad` leading columns dropped) would have observed; `total` cached columns."""
        return Observation(
            q_len=min(self.q_len, total - pad),
            query_stat=None if self.query_stat is None else self.query_stat[b : b + 1],
            think_query_stat=None if self.think_query_stat is None else self.think_query_stat[b : b + 1],
            attention_stat=None if self.attention_stat is None else self.attention_stat[b : b + 1, :, pad:],
        )


class SidePruner:
    def __init__(self, rule: PruneRule, side: str, keep_rule: str, window: int):
        self.rule, self.side, self.keep_rule, self.window = rule, side, keep_rule, window
        self.final = 0  # tokens [0, final) have their final pattern
        self.prefilled = False  # the first attention call (the prompt) has been consumed
        self.group_start = 0  # per-channel groups of CHANNEL_GROUP tokens start at this position
        self.acc: torch.Tensor | None = None  # running score statistics of tokens [final, T)
        self.cnt: torch.Tensor | None = None
        # left-pad columns per row [B] (None: no padding); only token rules use it (RowPruner handles the rest)
        self.pads: torch.Tensor | None = None
        # entries kept / judged per row, for the measured sparsity; accumulated on the device (no sync per step)
        self._kept: int | torch.Tensor = 0
        self._judged: int | torch.Tensor = 0
        # per-token keep per (row, KV head) [B, H] from an allocation (mustafar.allocation); None: the rule's keep
        self.keeps: torch.Tensor | None = None
        self._one_keep: int | None = None  # that keep when every (row, head) shares it
        # calibrated N:M rules: the channel order per (row, KV head) [B, H, 1, D], measured on the prompt
        self.order: torch.Tensor | None = None

    def set_keeps(self, keeps: torch.Tensor) -> None:
        """Per-(row, KV head) keep counts for per-token exact rules, decided before the prompt is pruned."""
        if self.prefilled or self.rule.direction != "token" or self.keep_rule != "exact":
            raise RuntimeError(
                "keeps are set before prefill pruning, for per-token rules under keep_rule=exact"
            )
        self.keeps = keeps.long()
        first = int(self.keeps.flatten()[0])
        self._one_keep = first if bool((self.keeps == first).all()) else None

    @property
    def kept(self) -> int:
        return int(torch.as_tensor(self._kept).sum())

    @property
    def judged(self) -> int:
        return int(torch.as_tensor(self._judged).sum())

    def row_counts(self, batch: int) -> list[tuple[int, int]]:
        """(kept, judged) entries of each of `batch` rows (pad columns never counted)."""
        kept = torch.as_tensor(self._kept).expand(batch).tolist()
        judged = torch.as_tensor(self._judged).expand(batch).tolist()
        return [(int(k), int(j)) for k, j in zip(kept, judged)]

    @property
    def needs(self) -> str | None:
        """The statistic this pruner needs from the attention call."""
        if not self.rule.active:
            return None
        if self.rule.scorer == "think":
            return "think_query" if self.side == "k" else None
        if self.rule.scorer == "output_aware":
            return "query" if self.side == "k" else "attention"
        return None

    def keep_for(self, head_dim: int) -> int | None:
        """Entries every final token keeps when that count is fixed (the compressed store's fast layout), else None:
        per-channel groups and the published magnitude threshold (which keeps ties) give varying counts."""
        if not self.rule.active:
            return head_dim
        if self.keeps is not None:
            return self._one_keep
        if self.rule.direction == "channel" and self.rule.scorer != "think":
            return None
        if self.keep_rule != "reference":  # exact's count; word and nm* split it into quotas
            return exact_keep(head_dim, self.rule.sparsity)
        if self.rule.scorer == "magnitude":
            return None
        if self.rule.scorer == "think":
            return reference_think_keep(head_dim, self.rule.sparsity)
        return reference_topk_keep(head_dim, self.rule.sparsity)

    @property
    def ranks_prompt(self) -> bool:
        """True when prefill ranks each channel over the prompt instead of per 32-token group."""
        return self.rule.direction == "channel" and self.rule.scorer == "output_aware"

    @property
    def packs_topk(self) -> bool:
        """True when the pattern is plain per-token magnitude top-k (per word under ``word``, per group under the
        N:M rules, which the store knows from its ``word_quota``, ``nm_group``, ``nm_strided`` and, calibrated, the
        head order the cache sets from :attr:`order`), which a store can prune and pack in one pass (no mask of the
        whole prompt: under ``nm8c`` its gathers were transients several times the prompt's size)."""
        return (
            self.rule.active
            and self.rule.direction == "token"
            and self.rule.scorer == "magnitude"
            and self.keep_rule in ("exact", "word", *NM_GROUPS, *CALIBRATED_GROUPS)
            and (self.keeps is None or self._one_keep is not None)
        )

    def step(
        self, tail: torch.Tensor, obs: Observation, want_mask: bool = True
    ) -> tuple[int, torch.Tensor | None]:
        """Consume one attention call; return (n, mask): tail tokens [0, n) are now final with pattern `mask`.

        mask None means "keep everything" unless `want_mask` is False and `packs_topk` holds, in which case the
        caller packs the top-k itself.
        """
        total = self.final + tail.shape[2]
        prefill, self.prefilled = not self.prefilled, True
        if not self.rule.active:
            self.final = total
            return tail.shape[2], None
        if self.rule.scorer == "think":
            return self._think(tail, obs, prefill)
        self._accumulate(tail, obs, total)
        if prefill and self.keep_rule in CALIBRATED_GROUPS:
            self._calibrate(tail)
        end = self._final_after(total, prefill)
        if prefill and self.ranks_prompt:
            self.group_start = end
        n = end - self.final
        if n <= 0:
            return 0, None
        rows = tail[:, :, :n]
        if not want_mask and self.packs_topk:
            self._finish(n, None, rows=rows, keep=self.keep_for(rows.shape[-1]))
            return n, None
        score = self._score(rows, n)
        if self.keeps is not None:
            mask = head_topk_mask(score, self.keeps)
        elif self.rule.direction == "token":
            mask = keep_mask(score, self.rule.sparsity, self.keep_rule, self._thresholded, order=self.order)
        elif prefill and self.ranks_prompt:
            mask = keep_mask(score, self.rule.sparsity, self.keep_rule, self._thresholded, dim=2)
        else:
            b, h, _, d = rows.shape
            grouped = score.view(b, h, n // CHANNEL_GROUP, CHANNEL_GROUP, d)
            mask = keep_mask(grouped, self.rule.sparsity, self.keep_rule, self._thresholded, dim=3).view_as(
                rows
            )
        self._finish(n, mask, rows=rows)
        return n, mask

    def _calibrate(self, prompt: torch.Tensor) -> None:
        """The calibrated rule's channel order from the prompt's mean magnitude per channel (every prompt token,
        the window included; a row's pad columns left out). Summed over chunks of tokens: fp32 magnitudes of a
        whole long prompt would be a transient of twice its size, per layer."""
        b, h, t, d = prompt.shape
        real = self._real_columns(0, t, b, prompt.device).float()
        total = torch.zeros(b, h, d, dtype=torch.float32, device=prompt.device)
        for start in range(0, t, CALIBRATION_CHUNK):
            part = prompt[:, :, start : start + CALIBRATION_CHUNK].abs().float()
            total += (part * real[:, None, start : start + CALIBRATION_CHUNK, None]).sum(2)
        mean = total / real.sum(1).clamp_min(1)[:, None, None]
        self.order = balanced_groups(mean, CALIBRATED_GROUPS[self.keep_rule]).unsqueeze(2)

    def _final_after(self, total: int, prefill: bool) -> int:
        """Tokens [0, returned) have their final pattern once this call's `total` tokens are cached."""
        left = max(0, total - self.window)  # tokens that have left the window
        if self.rule.direction == "token":
            return left
        if prefill and self.ranks_prompt:  # the published ranking has no window
            return total if self.keep_rule == "reference" else left
        whole = max(0, left - self.group_start) // CHANNEL_GROUP * CHANNEL_GROUP
        return self.group_start + whole

    @property
    def _thresholded(self) -> bool:
        return self.rule.scorer == "magnitude"

    def _think(self, tail: torch.Tensor, obs: Observation, prefill: bool) -> tuple[int, torch.Tensor | None]:
        if not prefill:  # prefill only: generated tokens stay dense
            return 0, None
        score = scores.think_channel_score(tail, obs.think_query_stat if self.side == "k" else None)
        channels = topk_mask(score, self.keep_for(tail.shape[-1]))
        mask = channels.unsqueeze(2).expand_as(tail)
        self._finish(tail.shape[2], mask, rows=tail)
        return tail.shape[2], mask

    def _accumulate(self, tail: torch.Tensor, obs: Observation, total: int) -> None:
        """Add this step's statistic to every token still in the window (new tokens included)."""
        if self.needs is None:
            return
        b, h, n_tail, d = tail.shape
        grow = n_tail - (0 if self.acc is None else self.acc.shape[2])
        shape = (b, h, grow, d) if self.side == "k" else (b, h, grow)
        fresh = torch.zeros(shape, dtype=torch.float32, device=tail.device)
        self.acc = fresh if self.acc is None else torch.cat([self.acc, fresh], dim=2)
        zeros = torch.zeros(grow, device=tail.device)
        self.cnt = zeros if self.cnt is None else torch.cat([self.cnt, zeros])
        # tail index of the first token still in the window (this call's new tokens included)
        first = max(self.final, total - obs.q_len - self.window) - self.final
        if self.side == "k":
            self.acc[:, :, first:] += obs.query_stat.unsqueeze(2)
        else:
            self.acc[:, :, first:] += obs.attention_stat[:, :, self.final + first : total]
        self.cnt[first:] += 1

    def _score(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        if self.rule.scorer == "magnitude":
            return scores.magnitude(rows)
        mean = self.acc[:, :, :n] / self.cnt[:n].clamp_min(1).view(1, 1, n, *([1] * (self.acc.dim() - 3)))
        if self.side == "k":
            return scores.key_output_aware(rows, mean)
        return scores.value_output_aware(rows, mean)

    def _real_columns(self, start: int, n: int, batch: int, device: torch.device) -> torch.Tensor:
        """[B, n] bool: which of the columns ``start .. start + n - 1`` hold each row's real tokens (not its
        left pads)."""
        if self.pads is None:
            return torch.ones(batch, n, dtype=torch.bool, device=device)
        columns = torch.arange(start, start + n, device=device)
        return columns.unsqueeze(0) >= self.pads.unsqueeze(1)

    def _finish(self, n: int, mask: torch.Tensor | None, rows: torch.Tensor, keep: int = 0) -> None:
        """Count the n rows made final (mask None: `keep` entries per token and head) and drop their statistics."""
        b, h, _, d = rows.shape
        real = self._real_columns(self.final, n, b, rows.device)  # pad columns are decided but never counted
        if mask is not None:
            kept = (mask & real.view(b, 1, n, 1)).sum(dim=(1, 2, 3))
        else:
            kept = real.sum(dim=1) * (h * keep)
        self._kept = self._kept + kept
        self._judged = self._judged + real.sum(dim=1) * (h * d)
        self.final += n
        if self.acc is not None:
            self.acc, self.cnt = self.acc[:, :, n:], self.cnt[n:]


class RowPruner:
    """One `SidePruner` per row of a left-padded batch, for rules whose decisions depend on where a row starts.

    Same interface as `SidePruner`; `final` counts batch columns. A row applies its zeros to the shared tail as
    soon as it decides (attention must see them), and a column is released once every row has decided it.
    """

    def __init__(self, rule: PruneRule, side: str, keep_rule: str, window: int, pads: list[int]):
        self.pads = pads
        self.rows = [SidePruner(rule, side, keep_rule, window) for _ in pads]
        self.order = None  # per-channel rules and ThinK: no calibrated channel order (per-token rules only)
        self.final = 0
        self.decided: list[list[torch.Tensor]] | None = None  # per row: masks of columns [final, row's final)

    @property
    def needs(self) -> str | None:
        return self.rows[0].needs

    @property
    def packs_topk(self) -> bool:
        return False

    @property
    def prefilled(self) -> bool:
        return self.rows[0].prefilled

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.rows)

    @property
    def judged(self) -> int:
        return sum(r.judged for r in self.rows)

    def keep_for(self, head_dim: int) -> int | None:
        return self.rows[0].keep_for(head_dim)

    def row_counts(self, batch: int) -> list[tuple[int, int]]:
        return [(r.kept, r.judged) for r in self.rows]

    def _pad_mask(self, tail: torch.Tensor, pad: int) -> torch.Tensor:
        """Pads are never attended; a fixed-count store still needs `keep` entries per token."""
        b, h, _, d = tail.shape
        keep = self.keep_for(d)
        channel_kept = torch.arange(d, device=tail.device) < (d if keep is None else keep)
        return channel_kept.expand(1, h, pad, d).clone()

    def step(
        self, tail: torch.Tensor, obs: Observation, want_mask: bool = True
    ) -> tuple[int, torch.Tensor | None]:
        total = self.final + tail.shape[2]
        if self.decided is None:
            self.decided = [[self._pad_mask(tail, pad)] for pad in self.pads]
        for b, (pruner, pad) in enumerate(zip(self.rows, self.pads)):
            start = pad + pruner.final - self.final  # tail index of the row's first undecided token
            row_tail = tail[b : b + 1, :, start:]
            n, mask = pruner.step(row_tail, obs.row(b, pad, total))
            if n == 0:
                continue
            if mask is None:
                mask = torch.ones_like(row_tail[:, :, :n], dtype=torch.bool)
            else:
                row_tail[:, :, :n].masked_fill_(~mask, 0)
            self.decided[b].append(mask)
        n = min(pad + r.final for pad, r in zip(self.pads, self.rows)) - self.final
        if n <= 0:
            return 0, None
        masks = []
        for b, chunks in enumerate(self.decided):
            rows = torch.cat(chunks, dim=2)
            masks.append(rows[:, :, :n])
            self.decided[b] = [rows[:, :, n:]]
        self.final += n
        return n, torch.cat(masks, dim=0)
