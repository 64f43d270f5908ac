"""Spreading a K/V sparsity budget over layers or KV heads by their measured pruning error (docs/method.md §7).

`kv.allocation=error` gives every layer, `error_head` every (layer, KV head), its own per-token keep count,
decided once per sample at prefill: each unit's relative Frobenius error of magnitude top-k pruning at the
uniform keep is measured on the prompt tokens that prefill prunes, and the units share the budget (the uniform
keep times the number of units) in proportion to that error, clamped and rounded by :func:`allocate_keeps`.
Each row of a batch is decided from its own real tokens, so it gets the keeps it would get alone.

Layers run one after another, but the decision needs every layer's error: a layer's prefill pruning is therefore
deferred until the last layer has reported (prefill attention is dense anyway, so no output changes), then every
layer prunes its prompt with its own keeps (:class:`Allocator`).
"""

from __future__ import annotations

from typing import Protocol

import torch

from mustafar.config import KVConfig
from mustafar.pruning import Observation, exact_keep


class AllocatedLayer(Protocol):
    """What the allocator needs of a cache layer (`mustafar.cache.MustafarLayer`)."""

    layer_idx: int
    keys: torch.Tensor
    values: torch.Tensor
    pads: list[int] | None

    def set_keeps(self, side: str, keeps: torch.Tensor) -> None: ...

    def prune(self, obs: Observation) -> None: ...


MAX_SPARSITY = 0.95  # no unit is pruned beyond this (its keep never drops below exact_keep(D, 0.95))


def pruning_error_terms(
    rows: torch.Tensor, keep: int, pads: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared Frobenius norms per (row, head) [B, H] of what per-token top-`keep` magnitude pruning drops from
    `rows` [B, H, n, D], and of `rows` itself; columns before a row's `pads` entry are left out. The terms are
    fp32 squares summed in fp64 (docs/method.md §7), the dropped ones directly: total minus kept in fp32 cancelled
    to noise when little is dropped (a keep near D with large channels). Each row is squared after scaling by the
    power of two that puts its largest entry in [0.5, 1), and its sums scaled back in fp64: finite bf16/fp32
    entries of 2^64 or more squared to inf in fp32, and exact power-of-two scales change no bit of the sums."""
    values = rows.detach().float()
    # no pruned token: nothing to scale
    largest = values.abs().amax((1, 2, 3)) if values.numel() else values.new_zeros(rows.shape[0])
    exponent = torch.frexp(largest).exponent.view(-1, 1, 1, 1)
    sq = torch.ldexp(values, -exponent).square()  # exponent 0 (no scaling) for a zero, inf or NaN row
    unscale = torch.ldexp(torch.ones_like(exponent, dtype=torch.float64), 2 * exponent)[..., 0]  # [B, 1, 1]
    total = sq.sum(-1, dtype=torch.float64) * unscale
    dropped = sq.topk(sq.shape[-1] - min(keep, sq.shape[-1]), dim=-1, largest=False).values
    dropped = dropped.sum(-1, dtype=torch.float64) * unscale
    if pads is not None:
        columns = torch.arange(rows.shape[2], device=rows.device)
        real = columns.unsqueeze(0) >= torch.tensor(pads, device=rows.device).unsqueeze(1)  # [B, n]
        dropped, total = dropped * real.unsqueeze(1), total * real.unsqueeze(1)
    return dropped.sum(-1), total.sum(-1)


def relative_error(dropped: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """sqrt(dropped / total), 0 where nothing was measured."""
    return torch.where(total > 0, dropped / total.clamp_min(1e-300), torch.zeros_like(total)).sqrt()


def allocate_keeps(errors: torch.Tensor, budget: int, lo: int, hi: int) -> torch.Tensor:
    """Integer keeps [R, N] for the N units of each row of `errors` [R, N]: each row sums to exactly N·budget,
    every keep lies in [lo, hi], and a larger error never gets a smaller keep.

    Targets t_i = clamp(c·e_i, lo, hi) with the scale c chosen so that Σ t_i = N·budget (found by bisection;
    Σ t_i grows with c). Every target is then floored and the missing units (N·budget minus the floors) go, one
    each, to the largest fractional parts (ties to the lower index). A row whose errors are all zero, or too few
    of them nonzero to absorb the budget at `hi`, gives its zero-error units an equal share of the rest.
    """
    if not lo <= budget <= hi:
        raise ValueError(f"budget {budget} is outside [lo={lo}, hi={hi}]")
    e = _merge_rounding_ties(errors.double().clamp_min(0).cpu())
    return torch.stack([_allocate_row(row, budget, lo, hi) for row in e]).to(errors.device)


ROUNDING_TIE = 1e-12  # relative: errors this close differ only by the order their fp64 sums were taken in


def _merge_rounding_ties(errors: torch.Tensor) -> torch.Tensor:
    """Errors [R, N] with each run of values equal to within float rounding set to the run's smallest, so that
    such units tie exactly and the tie goes to the lower index (a 1-ulp difference once decided it)."""
    out = errors.clone()
    for row in out:
        values, order = torch.sort(row, stable=True)
        for i in range(1, len(values)):
            if values[i] - values[i - 1] <= ROUNDING_TIE * values[i]:
                values[i] = values[i - 1]
        row[order] = values
    return out


def _allocate_row(e: torch.Tensor, budget: int, lo: int, hi: int) -> torch.Tensor:
    n = e.numel()
    total = float(n * budget)
    positive = e > 0
    ceiling = float(torch.where(positive, float(hi), float(lo)).sum())
    if ceiling <= total:  # even c = ∞ cannot spend the budget: zero-error units share what is left
        target = torch.where(
            positive, float(hi), (total - hi * int(positive.sum())) / max(1, int((~positive).sum()))
        )
    else:
        low, high = 0.0, hi / float(e[positive].min())  # at `high` every positive unit sits at hi
        # 200 halvings reach fp64 resolution unless the errors span more than ~60 decades; then go on until they do
        # (a tiny error's huge bracket left `high` unconverged and the keeps summing past the budget)
        steps = 0
        while steps < 200 or (high - low > 1e-15 * high and steps < 5000):
            mid = (low + high) / 2
            if float((mid * e).clamp(lo, hi).sum()) < total:
                low = mid
            else:
                high = mid
            steps += 1
        target = (high * e).clamp(lo, hi)
    keeps = target.floor()
    missing = int(round(total - float(keeps.sum())))
    order = torch.sort(-(target - keeps), stable=True).indices  # largest fraction first, ties to lower index
    keeps[order[:missing]] += 1
    return keeps.long()


def _check_finite(dropped: torch.Tensor, total: torch.Tensor, side: str, dims: tuple[str, ...]) -> None:
    """Refuse error terms no allocation can rank: an inf or NaN among a unit's prompt keys or values (an fp16
    overflow) makes its sums non-finite, and the ratio would read 0 or NaN, so keeps spread by it would be
    arbitrary. The sums are checked, not the ratio: one inf entry leaves the dropped sum finite and the ratio 0."""
    bad = (~(dropped.isfinite() & total.isfinite())).nonzero()
    if len(bad):
        at = ", ".join(f"{d} {i}" for d, i in zip(dims, bad[0].tolist()))
        raise ValueError(
            f"kv.allocation: the {side.upper()} prefill pruning error at {at} is not finite (squared sum of the "
            f"prompt {total[tuple(bad[0])].item()}): non-finite keys or values in the prompt; the allocation "
            "needs finite errors"
        )


class Allocator:
    """Collects every layer's prefill errors, decides the keeps, then lets each layer prune its prompt."""

    def __init__(self, policy: KVConfig, layers: list[AllocatedLayer]):
        self.policy, self.layers = policy, layers
        self.decided = False
        self.reports: dict[int, tuple[Observation, dict[str, tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.keeps: dict[str, torch.Tensor] = {}  # side -> [B, L, H] keeps decided for this batch

    def sides(self) -> list[str]:
        return [s for s in ("k", "v") if getattr(self.policy, s).active]

    def uniform_keep(self, side: str, head_dim: int) -> int:
        return exact_keep(head_dim, getattr(self.policy, side).sparsity)

    def report(self, layer: AllocatedLayer, obs: Observation) -> None:
        """Layer `layer`'s prefill: measure its errors and hold its pruning until every layer has reported."""
        keys, values = layer.keys, layer.values
        n = max(0, keys.shape[2] - self.policy.window)  # the prompt tokens prefill prunes
        terms = {}
        for side, tensor in (("k", keys), ("v", values)):
            if side in self.sides():
                keep = self.uniform_keep(side, tensor.shape[-1])
                # on the host: layers may live on different devices (device_map=auto)
                terms[side] = tuple(t.cpu() for t in pruning_error_terms(tensor[:, :, :n], keep, layer.pads))
        self.reports[layer.layer_idx] = (obs, terms)
        if len(self.reports) == len(self.layers):
            self._decide()

    def _decide(self) -> None:
        head_dim = self.layers[0].keys.shape[-1]
        for side in self.sides():
            dropped = torch.stack([self.reports[i][1][side][0] for i in range(len(self.layers))], dim=1)
            total = torch.stack([self.reports[i][1][side][1] for i in range(len(self.layers))], dim=1)
            b, n_layers, heads = dropped.shape  # [B, L, H]
            budget = self.uniform_keep(side, head_dim)
            lo = min(exact_keep(head_dim, MAX_SPARSITY), budget)
            if self.policy.allocation == "error":
                dropped, total = dropped.sum(-1), total.sum(-1)  # [B, L]: a layer's heads together
                _check_finite(dropped, total, side, ("row", "layer"))
                err = relative_error(dropped, total)
                keeps = allocate_keeps(err, budget, lo, head_dim).unsqueeze(-1).expand(b, n_layers, heads)
            else:
                _check_finite(dropped, total, side, ("row", "layer", "KV head"))
                err = relative_error(dropped, total)
                keeps = allocate_keeps(err.reshape(b, n_layers * heads), budget, lo, head_dim).view(
                    b, n_layers, heads
                )
            self.keeps[side] = keeps.contiguous()
        self.decided = True
        for i, layer in enumerate(self.layers):
            for side, keeps in self.keeps.items():
                layer.set_keeps(side, keeps[:, i].to(layer.keys.device))
        reports, self.reports = self.reports, {}
        for i, layer in enumerate(self.layers):
            layer.prune(reports[i][0])
