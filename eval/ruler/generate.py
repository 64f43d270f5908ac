"""Shared RULER generation machinery: templates, prompt assembly, token counting and haystack sizing.

Every task family subclasses `TaskGenerator`: it builds one prompt for a given haystack size (`build`), and this
module finds the largest size whose final prompt fits `length` (docs/evaluation.md §2.5) and draws the samples at that size.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

# A string no chat template produces by itself; the rendered wrapper is split around it (see `PromptWrapper`).
_SENTINEL = "\u2063RULER-TASK-TEMPLATE\u2063"


# One haystack unit of the noise haystack (niah noise, vt).
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@cache
def wonderwords_list(name: str) -> tuple[str, ...]:
    """A wonderwords 3.0.1 word list ("nounlist.txt", ...) read as wonderwords does (lines, right-stripped)."""
    text = resources.files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
    return tuple(line.rstrip() for line in text.splitlines())


@cache
def templates() -> dict[str, dict[str, Any]]:
    """The verbatim RULER templates and answer prefixes (docs/evaluation.md §2.3), shipped as package data."""
    return json.loads(resources.files(__package__).joinpath("templates.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class PromptWrapper:
    """The model template as the text before and after the user turn's content.

    RULER formats `model_template.format(task_template=...)` and then appends the answer prefix, so the prefix
    sits after the assistant header. Rendering the chat template once around a sentinel and splitting gives the
    same text as rendering every filled prompt, without re-running Jinja on long haystacks.
    """

    head: str = ""
    tail: str = ""

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, chat_template: bool) -> PromptWrapper:
        if not chat_template or not getattr(tokenizer, "chat_template", None):
            return cls()
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_SENTINEL) != 1:
            raise ValueError("the tokenizer's chat template does not render the user message exactly once")
        head, tail = rendered.split(_SENTINEL)
        return cls(head, tail)

    @property
    def is_chat(self) -> bool:
        return bool(self.head or self.tail)

    def prompt(self, task_text: str, answer_prefix: str, before_task: str = "") -> str:
        """Final prompt text: wrapper(before_task + task_text) + answer_prefix."""
        return self.head + before_task + task_text + self.tail + answer_prefix


@dataclass
class Draft:
    """One generated prompt before tokenisation."""

    text: str  # complete final prompt: model template, task template, haystack and answer prefix
    answers: list[str]
    answer_prefix: str
    meta: dict[str, Any] = field(default_factory=dict)


class HaystackTooSmall(ValueError):
    """Even the smallest haystack of a task does not fit the requested length."""


@dataclass
class GenContext:
    """What a task generator needs: the tokenizer, the wrapper, the budget and its own seeded RNG streams."""

    tokenizer: Any
    wrapper: PromptWrapper
    length: int
    seed: int
    rng: random.Random = field(init=False)
    np_rng: np.random.RandomState = field(init=False)

    def __post_init__(self) -> None:
        # Each task draws from its own streams seeded once, as RULER seeds every task script independently.
        self.rng = random.Random(self.seed)
        self.np_rng = np.random.RandomState(self.seed)

    def count(self, text: str) -> int:
        """Tokens of a text as RULER counts them: `tokenize`, so no BOS/EOS unless the text contains them."""
        return len(self.tokenizer.tokenize(text))

    def fresh_shuffle(self, items: list[Any]) -> None:
        """RULER's shuffles with a fresh `Random(seed)`: equal-length inputs get the same permutation."""
        random.Random(self.seed).shuffle(items)


class TaskGenerator(ABC):
    """One RULER task: builds prompts at a haystack size; sizing per docs/evaluation.md §2.5 (binary search by default)."""

    tokens_to_generate: int
    upper_factor: float = 3.0  # search upper bound = upper_factor * length / tokens_per_unit

    def __init__(self, ctx: GenContext):
        self.ctx = ctx

    @property
    @abstractmethod
    def increment(self) -> int:
        """Haystack units added or removed per sizing step."""

    @abstractmethod
    def build(self, units: int) -> Draft:
        """Draw one prompt with `units` haystack units (consumes the task's RNG streams)."""

    def total_length(self, draft: Draft) -> int:
        return self.ctx.count(draft.text) + self.tokens_to_generate

    def fits(self, units: int) -> bool:
        return self.total_length(self.build(units)) <= self.ctx.length

    @property
    def max_units(self) -> int | None:
        """Largest meaningful haystack size (None: unbounded)."""
        return None

    def at_max_units(self) -> int:
        """Called when even `max_units` fits the budget; the default keeps that size."""
        assert self.max_units is not None
        return self.max_units

    def find_units(self) -> int:
        """Largest haystack size whose prompt fits: binary search over [increment, upper bound]."""
        inc, budget, cap = self.increment, self.ctx.length, self.max_units
        first = self.total_length(self.build(inc))
        if first > budget:
            raise HaystackTooSmall(
                f"{type(self).__name__}: the smallest haystack ({inc} units) already needs {first} tokens "
                f"(prompt + tokens_to_generate), more than length={budget}"
            )
        per_unit = max(first - self.tokens_to_generate, 1) / inc
        hi = max(int(self.upper_factor * budget / per_unit), 2 * inc)
        lo = inc
        # The estimate includes the template overhead, so it is normally generous; grow it if it is not, so the
        # result really is the largest size that fits.
        while self.fits(hi if cap is None else min(hi, cap)):
            if cap is not None and hi >= cap:
                return self.at_max_units()
            lo, hi = hi, 2 * hi
        if cap is not None:
            hi = min(hi, cap)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.fits(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def draw(self, units: int) -> tuple[Draft, int, int]:
        """One sample at `units`, shrinking by one increment until it fits (random draws vary in length)."""
        while True:
            draft = self.build(units)
            total = self.total_length(draft)
            if total <= self.ctx.length:
                return draft, total, units
            if units <= self.increment:
                raise HaystackTooSmall(
                    f"{type(self).__name__}: no haystack size fits length={self.ctx.length} ({total} tokens)"
                )
            units = max(units - self.increment, self.increment)

    def generate(self, n: int) -> list[tuple[Draft, int]]:
        """`n` drafts with their total lengths (prompt tokens + tokens_to_generate)."""
        units = self.find_units()
        out = []
        for _ in range(n):
            draft, total, used = self.draw(units)
            draft.meta["num_haystack"] = used
            out.append((draft, total))
        return out
