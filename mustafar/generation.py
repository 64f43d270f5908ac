"""Batched greedy generation through a pruning cache, each row decided exactly as if it ran alone.

Prompts of different lengths are left-padded into one batch: every row ends at the same column, so one decode
step feeds one token per row. Positions come from the attention mask (a row's first real token is position 0,
as in its unpadded run) and the cache is told each row's pad count (`MustafarCache.set_padding`), so pads never
enter pruning decisions or counts. A row that stops (a stop id once `min_new_tokens` are out, or its own
`max_new_tokens`) keeps stepping with the batch until all rows are done; its output and cache statistics are
taken at the step it stopped.

`prefill` and `decode_step` are the two model calls; `decode_step` takes fixed-shape inputs ([B, 1] ids and
positions, the cache position) so that a captured replay of it can stand in for the eager call.

With `static` (default: on a CUDA device whenever the policy and model are in the static scope) the batch runs
through a `StaticMustafarCache` for the widest prompt + the largest budget, rounded up to a capacity bucket and
kept with its `DecodeRunner` (a replayed CUDA graph on a GPU, eager on a CPU) for the next batch of the same
shape (`mustafar.runner_pool`). The static layers never attend or count a row's pad columns, so tokens and
per-row statistics equal the dynamic path. The cache reaches the model under the keyword its forward takes
(`mustafar.cache_kwarg`).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from mustafar.attention import attach, new_cache
from mustafar.cache import CacheStats, MustafarCache
from mustafar.cache_kwarg import cache_kwargs
from mustafar.config import KVConfig
from mustafar.graphs import DecodeRunner
from mustafar.runner_pool import pool_of
from mustafar.static_cache import StaticMustafarCache, announce_fallback, static_reason


@dataclass
class GenerationOutput:
    """One row's result: its generated tokens (the stop token included, as `model.generate` returns it)."""

    tokens: list[int]
    prompt_tokens: int
    stats: CacheStats | None  # the row's cache statistics when it stopped (None for an empty cache)
    stopped_by: str  # "stop_id" or "max_new_tokens"


@dataclass
class Batch:
    """Left-padded prompts: ids and mask [B, T], `pads` leading pad columns per row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pads: list[int]

    @property
    def position_ids(self) -> torch.Tensor:
        """Each row counts from its first real token, so rotary positions equal its unpadded run."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _prompt_lists(prompts: object) -> list[list[int]]:
    """The prompts as lists of ints (a 2-d tensor or array: one prompt per row); anything that is not a collection
    of token-id collections is named in the error (a flat list of ids, text, float ids), before the model runs."""
    if hasattr(prompts, "tolist") and not isinstance(prompts, list):  # a tensor or an array
        prompts = prompts.tolist()
    if not isinstance(prompts, Iterable) or isinstance(prompts, str | bytes):
        raise ValueError(f"prompts={prompts!r:.80} must be a list of prompts, each a list of token ids")
    out = []
    for i, prompt in enumerate(prompts):
        if hasattr(prompt, "tolist") and not isinstance(prompt, list):
            prompt = prompt.tolist()
        if not isinstance(prompt, Iterable) or isinstance(prompt, str | bytes):
            raise ValueError(
                f"prompts[{i}]={prompt!r:.80} is not a list of token ids (prompts is a list of prompts, each a "
                "list of token ids; wrap a single prompt in a list)"
            )
        ids = [_integer(t) for t in prompt]
        if None in ids:
            bad = list(prompt)[ids.index(None)]
            raise ValueError(f"prompt {i} holds {bad!r}, not a token id")
        out.append(ids)
    return out


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> Batch:
    prompts = _prompt_lists(prompts)
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    empty = next((b for b, p in enumerate(prompts) if len(p) == 0), None)
    if empty is not None:
        raise ValueError(f"prompt {empty} is empty: every prompt needs at least one token")
    if _integer(pad_id) is None:
        raise ValueError(
            f"pad_id={pad_id!r} is not a token id (pads are masked out: any id in the vocabulary will do, e.g. 0)"
        )
    width = max(len(p) for p in prompts)
    pads = [width - len(p) for p in prompts]
    ids = torch.tensor([[pad_id] * pad + list(p) for pad, p in zip(pads, prompts)], device=device)
    mask = torch.tensor([[0] * pad + [1] * len(p) for pad, p in zip(pads, prompts)], device=device)
    return Batch(ids, mask, pads)


def _check_vocabulary(batch: Batch, vocab: int) -> None:
    """Refuse token ids outside the embedding table, naming the prompt and id (or the pad id), where the embedding
    lookup would fail with a bare index error (on a GPU, a device-side assert)."""
    ids = batch.input_ids
    outside = (ids < 0) | (ids >= vocab)
    if not outside.any():
        return
    row, col = outside.nonzero()[0].tolist()
    what = (
        f"pad_id={int(ids[row, col])} is"
        if col < batch.pads[row]
        else f"prompt {row} holds token id {int(ids[row, col])}"
    )
    raise ValueError(f"{what} outside the model's vocabulary of {vocab} ids")


def prefill(model: torch.nn.Module, cache: MustafarCache, batch: Batch) -> torch.Tensor:
    """Run the prompts through the (attached) cache; logits of each row's next token [B, V]."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=True,
        logits_to_keep=1,
        **cache_kwargs(model, cache),
    )
    return out.logits[:, -1]


def decode_step(
    model: torch.nn.Module,
    cache: MustafarCache,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    cache_position: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """One token per row ([B, 1] ids and positions) at cache column `cache_position` ([1]); logits [B, V].

    `attention_mask` [B, T+1] marks each row's real columns so far (pads 0)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache_position=cache_position,
        use_cache=True,
        **cache_kwargs(model, cache),
    )
    return out.logits[:, -1]


def _integer(value: object) -> int | None:
    """``value`` as a Python int when it is an integer of any kind (numpy, a 0-d tensor), else None."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dim()):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _per_row(value: int | Sequence[int], n: int, name: str) -> list[int]:
    one = _integer(value)
    if one is not None:
        values = [one] * n
    elif isinstance(value, Iterable) and not isinstance(value, str | bytes):
        values = [_integer(v) if _integer(v) is not None else v for v in value]
    else:
        raise ValueError(f"{name}={value!r} must be an integer >= 0 or one per prompt")
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} prompts")
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        raise ValueError(f"{name}={bad[0]!r} must be an integer >= 0")
    return values


def _id_set(ids: object, what: str) -> set[int]:
    """A collection of token ids as ints (numpy or tensor ids included); anything else named in the error (a
    tokenizer without an EOS id gives None)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.reshape(-1).tolist()
    if not isinstance(ids, Iterable) or isinstance(ids, str | bytes):
        raise ValueError(f"{what}={ids!r} must be a collection of token ids")
    out = set()
    for i in ids:
        value = _integer(i)
        if value is None:
            raise ValueError(f"{what} holds {i!r}, not a token id (a tokenizer without an EOS id gives None)")
        out.add(value)
    return out


def _stop_sets(stop_ids: object, n: int) -> list[set[int]]:
    """One set of stop ids per prompt, from one id, one collection shared by every prompt, or one per prompt."""
    if stop_ids is None or isinstance(stop_ids, str | bytes):
        raise ValueError(
            f"stop_ids={stop_ids!r} must be token ids: one, a collection, or one collection per prompt"
        )
    if _integer(stop_ids) is not None:
        return [{_integer(stop_ids)}] * n
    if not isinstance(stop_ids, Iterable) or (isinstance(stop_ids, torch.Tensor) and stop_ids.dim() < 2):
        return [_id_set(stop_ids, "stop_ids")] * n
    items = list(stop_ids)  # a 2-d tensor or array: one row of ids per prompt
    # no item a collection: one collection of ids shared by every prompt, its bad entry named by _id_set
    if not any(isinstance(i, Iterable) and not isinstance(i, str | bytes) for i in items):
        return [_id_set(items, "stop_ids")] * n
    if len(items) != n:
        raise ValueError(f"stop_ids has {len(items)} entries for {n} prompts")
    return [_id_set(s, f"stop_ids[{b}]") for b, s in enumerate(items)]


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    policy: KVConfig,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    stop_ids: Sequence[int] | Sequence[Sequence[int]] = (),
    min_new_tokens: int | Sequence[int] = 0,
    pad_id: int = 0,
    cache: MustafarCache | None = None,
    static: bool | None = None,
) -> list[GenerationOutput]:
    """Greedy continuations of `prompts` (token ids), one fresh pruning cache for the batch.

    `stop_ids`: ids that end a row (EOS included), shared or one collection per prompt; a stop id is never
    chosen before the row has `min_new_tokens` tokens (as transformers' min-length rule does). `cache`: an
    unused cache of `policy` to generate into (default: a new one), for callers that inspect it afterwards.
    `static`: decode through a static cache (CUDA graphs on a GPU); None picks it on CUDA when the policy and
    model allow it, True falls back to the dynamic cache (said once) where they do not.
    """
    if not isinstance(policy, KVConfig):
        raise TypeError(f"generate takes a KVConfig as its policy, got {type(policy).__name__} {policy!r}")
    prompts = _prompt_lists(prompts)
    n = len(prompts)
    budget = _per_row(max_new_tokens, n, "max_new_tokens")
    minimum = _per_row(min_new_tokens, n, "min_new_tokens")
    stops = _stop_sets(stop_ids, n)

    # "yes", 1.0 or "false" would be read by truth value (and 1.0 == True passed a membership test)
    if static is not None and not isinstance(static, bool):
        raise TypeError(f"static={static!r} must be True, False or None")
    device = next(model.parameters()).device
    batch = left_pad(prompts, pad_id, device)
    vocab = model.get_input_embeddings().num_embeddings
    _check_vocabulary(batch, vocab)
    for b, row in enumerate(stops):
        outside = sorted(i for i in row if not 0 <= i < vocab)
        if outside:  # such an id can never be generated: the row would silently never stop on it
            raise ValueError(f"stop id {outside[0]} (row {b}) is outside the model's vocabulary [0, {vocab})")
    runner = None
    if cache is None:
        runner = _static_runner(model, policy, batch, max(budget), static)
        cache = runner.cache if runner is not None else new_cache(model, policy)
    elif not isinstance(cache, MustafarCache):
        raise TypeError(f"cache= takes a MustafarCache (or None for a new one), got {type(cache).__name__}")
    elif static:
        raise ValueError("static=True builds its own cache: pass cache=None")
    elif cache.policy != policy or cache.get_seq_length() > 0:
        raise ValueError("generate needs an empty cache built for the same policy")
    elif isinstance(cache, StaticMustafarCache):  # the caller's own: sized and scoped for some other batch
        _check_static_fits(model, cache, batch, max(budget))
    if any(batch.pads) or not isinstance(cache, StaticMustafarCache):  # static layers: no pads, no RowPruners
        cache.set_padding(batch.pads, device)

    tokens: list[list[int]] = [[] for _ in range(n)]
    outputs: list[GenerationOutput | None] = [None] * n
    mask = batch.attention_mask
    positions = batch.position_ids[:, -1:]
    if runner is None and isinstance(cache, StaticMustafarCache):  # the caller's own static cache
        runner = DecodeRunner(model, cache, graphs=device.type == "cuda")
    with attach(model, cache):
        logits = prefill(model, cache, batch)
        mask = cache.prompt_mask(mask)  # eviction (kv.evict) shortened the cached prompt
        banned = _stop_mask(stops, logits.shape[-1], device)  # chosen only once min_new_tokens are out
        for row in range(n):  # a zero budget stops before the first token
            if budget[row] == 0:
                outputs[row] = _finish(cache, row, [], len(prompts[row]), "max_new_tokens")
        while any(o is None for o in outputs):
            step = len(tokens[0])
            below = torch.tensor([step < m for m in minimum], device=device).unsqueeze(1)
            chosen = logits.float().masked_fill(banned & below, float("-inf")).argmax(dim=-1)
            stopped = []
            for row, token in enumerate(chosen.tolist()):
                tokens[row].append(token)
                if outputs[row] is not None:
                    continue
                if token in stops[row] and step >= minimum[row]:
                    stopped.append((row, "stop_id"))
                elif step + 1 >= budget[row]:
                    stopped.append((row, "max_new_tokens"))
            for row, reason in stopped:  # this cache state is what the row's own run ends with
                outputs[row] = _finish(cache, row, tokens[row], len(prompts[row]), reason)
            if all(o is not None for o in outputs):
                break
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
            positions = positions + 1
            cache_position = torch.tensor([mask.shape[1] - 1], device=device)
            if runner is None:
                logits = decode_step(model, cache, chosen.unsqueeze(1), positions, cache_position, mask)
            else:  # the static layers mask pads from their own pad counts; the runner copies ids and positions
                logits = runner.step(chosen.unsqueeze(1), positions)
    return outputs


def _static_runner(
    model: torch.nn.Module, policy: KVConfig, batch: Batch, max_new_tokens: int, static: bool | None
) -> DecodeRunner | None:
    """The decode runner over a static cache (kept across calls, `mustafar.runner_pool`) where asked for (or,
    with `static=None`, on CUDA where in scope); None for the dynamic cache."""
    width, padded = batch.input_ids.shape[1], any(batch.pads)
    shortest = width - max(batch.pads)
    reason = static_reason(model, policy, width, padded, shortest)
    if static is None:
        static = batch.input_ids.device.type == "cuda" and reason is None
    if not static:
        return None
    if reason is not None:
        announce_fallback(reason)
        return None
    return pool_of(model).runner(model, policy, len(batch.pads), width, max_new_tokens, padded, shortest)


def _check_static_fits(
    model: torch.nn.Module, cache: StaticMustafarCache, batch: Batch, max_new_tokens: int
) -> None:
    """Refuse, before the prompt runs, a batch the caller's static cache cannot hold (capacity) or serve (a
    compressed row shorter than the window: `static_reason`)."""
    width, padded = batch.input_ids.shape[1], any(batch.pads)
    reason = static_reason(model, cache.policy, width, padded, width - max(batch.pads))
    if reason is not None:
        raise ValueError(f"this static cache cannot serve the batch: {reason}; pass cache=None")
    held = next((layer.batch for layer in cache.layers if layer.is_initialized), None)  # kept through reset()
    if held is not None and held != len(batch.pads):
        raise ValueError(
            f"this static cache holds {held} rows, the batch has {len(batch.pads)}; pass cache=None"
        )
    if width + max(0, max_new_tokens - 1) > cache.capacity:  # the last token is chosen, never cached
        raise ValueError(
            f"this static cache holds {cache.capacity} tokens per row, the batch needs {width} prompt columns + "
            f"max_new_tokens={max_new_tokens} - 1; pass cache=None"
        )


def _stop_mask(stops: list[set[int]], vocab: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(len(stops), vocab, dtype=torch.bool, device=device)
    for row, ids in enumerate(stops):
        mask[row, [i for i in ids if 0 <= i < vocab]] = True
    return mask


def _finish(cache: MustafarCache, row: int, tokens: list[int], prompt: int, reason: str) -> GenerationOutput:
    rows = cache.row_stats()
    return GenerationOutput(list(tokens), prompt, rows[row] if rows else None, reason)
