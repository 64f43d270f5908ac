"""How many entries survive, and which: the three keep rules of docs/method.md §4.

`exact` keeps round((1-s)·n) entries with a strict top-k whose ties go to the lower index, so every token (or
channel group) holds the same count. `word` keeps the same count per token, split into fixed quotas per 32-entry
bitmap word (top-k within each word), which the scatter decoder's fixed trip counts need (per-token rules only). `reference` reproduces the published code: magnitude rules keep every entry
>= the int(s·n)-th smallest |x| (n − int(s·n) + 1 plus ties), output-aware rules keep int(n·(1−s)), and ThinK
drops the int(n·s) lowest channels, keeping n − int(n·s) (one more than int(n·(1−s)) when n·s is fractional).
"""

from __future__ import annotations

import functools
import math

import torch


def exact_keep(n: int, sparsity: float) -> int:
    """round((1 − s)·n), halves rounded up (Python's round() would send 0.5 to even). The tolerance keeps an exact
    half a half: 1 − 0.9 is 0.09999999999999998 in floating point, which put (1 − 0.9)·15 just below 1.5."""
    return int(math.floor((1.0 - sparsity) * n + 0.5 + 1e-9))


def reference_topk_keep(n: int, sparsity: float) -> int:
    """The published output-aware count int(n·(1−s)); 0.3·128 is 38.400000000000006 in floating point."""
    return int(n * (1.0 - sparsity))


def reference_think_keep(n: int, sparsity: float) -> int:
    """The published ThinK count: it drops the int(n·s) lowest channels (keeps 39 of 128 at s = 0.7)."""
    return n - int(n * sparsity)


def topk_mask(score: torch.Tensor, keep: int, dim: int = -1) -> torch.Tensor:
    """Boolean mask of the `keep` largest scores along `dim`; equal scores go to the lower index."""
    n = score.shape[dim]
    if keep >= n:
        return torch.ones_like(score, dtype=torch.bool)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if keep <= 0:
        return mask
    order = torch.sort(score, dim=dim, descending=True, stable=True).indices
    return mask.scatter_(dim, order.narrow(dim, 0, keep), True)


def _ranks(score: torch.Tensor) -> torch.Tensor:
    """Each entry's rank along the last dim: 0 for the largest, equal scores ranked by index (lower first)."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    arange = torch.arange(score.shape[-1], device=score.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, arange)


def head_topk_mask(score: torch.Tensor, keeps: torch.Tensor) -> torch.Tensor:
    """Per-token top-k of `score` [B, H, n, D] keeping `keeps[b, h]` entries in row b, head h (ties to the lower
    channel, as :func:`topk_mask`)."""
    return _ranks(score) < keeps.view(*keeps.shape, 1, 1)


@functools.cache  # asked on every decode call (the dispatcher checks the stores' quotas)
def word_quotas(head_dim: int, keep: int) -> tuple[int, ...]:
    """Entries each 32-channel word keeps under the ``word`` rule: keep // W, one more for the first keep mod W
    words (W = head_dim / 32)."""
    w = head_dim // 32
    return tuple(keep // w + (1 if g < keep % w else 0) for g in range(w))


def word_topk_mask(score: torch.Tensor, keep: int, dim: int = -1) -> torch.Tensor:
    """The ``word`` rule: the :func:`word_quotas` largest scores of every 32-entry word along ``dim`` (ties to
    the lower index), ``keep`` in all."""
    n = score.shape[dim]
    if n % 32:
        raise ValueError(f"the word rule needs a multiple of 32 entries along dim {dim}, got {n}")
    s = score.movedim(dim, -1)
    words = s.reshape(*s.shape[:-1], n // 32, 32)
    rank = _ranks(words)
    # the quotas of word_quotas, built on the device (no host copy: the static caches capture this in a CUDA graph)
    w = n // 32
    quota = (torch.arange(w, device=score.device) < keep % w).to(torch.int64) + keep // w
    return (rank < quota.unsqueeze(-1)).reshape(s.shape).movedim(-1, dim)


# the N:M keep rules: (group size M, strided) per rule name; strided groups take every (D/M)-th channel
NM_GROUPS = {"nm4": (4, False), "nm8": (8, False), "nm16": (16, False), "nm4s": (4, True), "nm8s": (8, True)}
# N:M rules whose groups are calibrated per (row, KV head) from the prompt: group size M per rule name
CALIBRATED_GROUPS = {"nm8c": 8, "nm16c": 16}


def balanced_groups(magnitude: torch.Tensor, group: int) -> torch.Tensor:
    """A channel order per leading index from mean magnitudes ``[..., D]``: the channels, largest mean first, are
    dealt in snake order over the D/M groups of ``group`` consecutive positions (group 0, 1, .., last, last, ..,
    0, ...), so every group holds one channel of each rank band. Returns ``[..., D]``: position p holds channel
    ``order[..., p]``. Large channels crowded into one group is what breaks consecutive groups on keys
    (experiments/nm_quota); dealing them out keeps each group's top-N close to the token's own top-k."""
    d = magnitude.shape[-1]
    if d % group:
        raise ValueError(
            f"calibrated groups of {group} channels need a head dim divisible by {group}, got {d}"
        )
    groups = d // group
    by_size = magnitude.argsort(dim=-1, descending=True, stable=True)
    rank = torch.arange(d, device=magnitude.device)
    band, pos = rank // groups, rank % groups
    slot = torch.where(band % 2 == 0, pos, groups - 1 - pos) * group + band  # where rank r's channel goes
    return torch.empty_like(by_size).scatter_(-1, slot.expand_as(by_size), by_size)


def calibrated_nm_mask(
    score: torch.Tensor, keep: int, group: int, order: torch.Tensor, dim: int = -1
) -> torch.Tensor:
    """The ``nm8c`` rule: :func:`nm_topk_mask` over consecutive groups of the channels taken in ``order``
    (:func:`balanced_groups`, broadcast over ``score``'s other dims, channels along ``dim``)."""
    s = score.movedim(dim, -1)
    idx = order.expand(s.shape)
    kept = nm_topk_mask(torch.gather(s, -1, idx), keep, group)
    return torch.zeros_like(kept).scatter_(-1, idx, kept).movedim(-1, dim)


def nm_whole_sparsities(group: int) -> str:
    """The sparsities whose count splits evenly over ``group``-entry groups (1 − j/M), for error messages."""
    return ", ".join(f"{1 - j / group:g}" for j in range(1, group))


def nm_topk_mask(
    score: torch.Tensor, keep: int, group: int, dim: int = -1, strided: bool = False
) -> torch.Tensor:
    """The N:M rules: the N = keep·M/n largest scores of every group of M = ``group`` entries along ``dim`` (ties
    to the lower index), ``keep`` in all. Groups are M consecutive entries (``nm4``, ``nm8``, ``nm16``: 2:4 is the
    pattern sparse tensor cores read) or, ``strided``, the entries j, j + n/M, j + 2n/M, ... (``nm4s``, ``nm8s``:
    the same pattern after a fixed permutation of the channels, which leaves q·k unchanged). N must be whole."""
    n = score.shape[dim]
    if n % group:
        raise ValueError(
            f"the nm{group} keep rule splits {group}-entry groups, but there are {n} entries along dim {dim}"
        )
    if (keep * group) % n:
        raise ValueError(
            f"the nm{group} keep rule keeps the same count in every {group}-entry group, but keeping {keep} of {n} "
            f"entries is {keep * group / n:g} per group; sparsities with whole groups: {nm_whole_sparsities(group)}"
        )
    per = keep * group // n
    s = score.movedim(dim, -1)
    if strided:  # [M, n/M] puts channel j + i·n/M at [i, j]: its transpose has one group per row
        groups = s.reshape(*s.shape[:-1], group, n // group).transpose(-1, -2)
    else:
        groups = s.reshape(*s.shape[:-1], n // group, group)
    kept = _ranks(groups) < per
    return (kept.transpose(-1, -2) if strided else kept).reshape(s.shape).movedim(-1, dim)


def fixed_count_mask(
    score: torch.Tensor, keep: int, word: bool, dim: int = -1, group: int = 0, strided: bool = False
) -> torch.Tensor:
    """``keep`` entries per set along ``dim``: the same count in every ``group`` entries (``group`` > 0: the N:M
    rules, consecutive or ``strided`` groups), the per-word quotas (``word``) or a plain top-k; what a fixed-layout
    store holds, so the caches pick the variant from their store's ``nm_group``, ``nm_strided`` and
    ``word_quota``."""
    if strided and not group:
        raise ValueError(f"strided groups need a group size (the stores hold 4 or 8), got group={group}")
    if group:
        return nm_topk_mask(score, keep, group, dim, strided=strided)
    return word_topk_mask(score, keep, dim) if word else topk_mask(score, keep, dim)


def threshold_mask(magnitude: torch.Tensor, sparsity: float, dim: int = -1) -> torch.Tensor:
    """The published magnitude rule: keep entries >= the k-th smallest, k = int(s·n) (ties are all kept)."""
    k = int(sparsity * magnitude.shape[dim])
    if k == 0:
        return torch.ones_like(magnitude, dtype=torch.bool)
    threshold = torch.kthvalue(magnitude.float(), k, dim=dim, keepdim=True).values
    return magnitude.float() >= threshold


def keep_mask(
    score: torch.Tensor,
    sparsity: float,
    keep_rule: str,
    thresholded: bool,
    dim: int = -1,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask of surviving entries along `dim` under a keep rule.

    `thresholded` marks the published magnitude rules (kthvalue threshold) as opposed to its top-k rules;
    `order` is the calibrated rules' channel order (:func:`balanced_groups`).
    """
    n = score.shape[dim]
    if sparsity <= 0.0:
        return torch.ones_like(score, dtype=torch.bool)
    if keep_rule in CALIBRATED_GROUPS:
        if order is None:
            raise ValueError(f"keep rule {keep_rule!r} needs the channel order calibrated at prefill")
        return calibrated_nm_mask(score, exact_keep(n, sparsity), CALIBRATED_GROUPS[keep_rule], order, dim)
    if keep_rule in ("exact", "word"):
        return fixed_count_mask(score, exact_keep(n, sparsity), keep_rule == "word", dim)
    if keep_rule in NM_GROUPS:
        group, strided = NM_GROUPS[keep_rule]
        return nm_topk_mask(score, exact_keep(n, sparsity), group, dim, strided)
    if keep_rule != "reference":
        raise ValueError(f"unknown keep rule {keep_rule!r}")
    if thresholded:
        return threshold_mask(score, sparsity, dim)
    return topk_mask(score, reference_topk_keep(n, sparsity), dim)
