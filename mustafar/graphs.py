"""A decode step that is captured once in a CUDA graph and replayed per token, and a small greedy loop.

Eager transformers decoding is launch-bound (hundreds of small kernels per step, each with Python and launch
overhead); replaying a captured step costs one launch. `DecodeRunner.step(input_ids, position_ids) -> logits`
is the plug-in decode step for a generation loop: with a `StaticMustafarCache` on a CUDA device it runs a few
eager warm-up steps (Triton compilation, cuBLAS workspaces), captures the whole model's step (all layers, the
pruning/packing of the token leaving the window included) into static input/output buffers, and replays it.
Anywhere capture is impossible (CPU, a dynamic cache, an op that is not capturable) it runs eagerly and says
why once. One runner serves one cache (one batch size and capacity): the graph is bound to the cache's buffers,
which `StaticMustafarCache.reset` empties in place for the next batch (`mustafar.runner_pool` keeps runners).
"""

from __future__ import annotations

import torch

from mustafar.attention import attach, new_cache
from mustafar.cache import MustafarCache
from mustafar.cache_kwarg import cache_kwargs
from mustafar.config import KVConfig
from mustafar.static_cache import (
    StaticCacheError,
    StaticMustafarCache,
    capture_blocker,
    say_once,
    static_cache,
)

WARMUP_STEPS = 2


class DecodeRunner:
    """One-token decode steps through an attached `cache`; graph-replayed when `graphs` and capture is possible."""

    def __init__(self, model: torch.nn.Module, cache: MustafarCache, graphs: bool = True):
        self.model, self.cache = model, cache
        self.blocker = None if graphs else "graphs=False"
        if graphs:
            if not isinstance(cache, StaticMustafarCache):
                self.blocker = "the cache is dynamic (its shapes grow every step)"
            else:
                self.blocker = capture_blocker(cache, model.device)
            if self.blocker is not None:
                say_once(f"mustafar: decoding eagerly, no CUDA graph ({self.blocker})")
        self.steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def eager(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **cache_kwargs(self.model, self.cache),
        )
        return out.logits[:, -1]

    @torch.inference_mode()
    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache_position=None) -> torch.Tensor:
        """Logits [B, V] of the next token after `input_ids` [B, 1] at `position_ids` [B, 1] (`cache_position`
        is accepted for loop compatibility and unused: static layers keep their write index on the device)."""
        self.steps += 1
        if self.blocker is not None:
            return self.eager(input_ids, position_ids)
        if self.graph is not None:
            layer = self.cache.layers[0]
            if layer.host_length >= layer.capacity:  # a replay would write past the buffers
                raise StaticCacheError(f"static cache capacity {layer.capacity} exceeded by a replayed step")
            self.ids.copy_(input_ids)
            self.pos.copy_(position_ids)
            self.graph.replay()
            self.cache.advance(1)
            return self.logits
        if self.steps <= WARMUP_STEPS:  # on a side stream, as graph capture requires of warm-up work
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                logits = self.eager(input_ids, position_ids)
            torch.cuda.current_stream().wait_stream(side)
            return logits
        self.ids, self.pos = input_ids.clone(), position_ids.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records this step (the host mirrors advance once, here)
            self.logits = self.eager(self.ids, self.pos)
        graph.replay()  # and runs it
        self.graph = graph
        return self.logits


@torch.inference_mode()
def greedy(
    model: torch.nn.Module,
    policy: KVConfig,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    static: bool = True,
    graphs: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor], MustafarCache]:
    """Greedy continuation of unpadded prompts `input_ids` [B, T]: (tokens [B, max_new_tokens], per-step logits,
    the cache). The benchmarks' loop; no stop ids, every row runs to the budget."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    b, t = input_ids.shape
    cache = static_cache(model, policy, t, max_new_tokens) if static else new_cache(model, policy)
    with attach(model, cache):
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
        logits = out.logits[:, -1]
        runner = DecodeRunner(model, cache, graphs=graphs)
        tokens, all_logits = [], [logits.clone()]
        pos = torch.full((b, 1), t, dtype=torch.long, device=input_ids.device)
        for i in range(max_new_tokens):
            tok = logits.argmax(-1, keepdim=True)
            tokens.append(tok)
            if i == max_new_tokens - 1:
                break
            logits = runner.step(tok, pos + i)
            all_logits.append(logits.clone())
    return torch.cat(tokens, dim=1), all_logits, cache
