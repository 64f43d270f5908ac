"""Frequent words extraction (RULER `freq_words_extraction.py`, docs/evaluation.md §2.4): Zipf-distributed coded words.

The rank-1 word is the noise token "...", so the answers are the 2nd to 4th most frequent words. Sizing is RULER's
linear search rather than the binary search of the other tasks.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

from .generate import Draft, GenContext, TaskGenerator, templates

ZETA_2 = math.pi**2 / 6


@dataclass(frozen=True)
class FweConfig:
    alpha: float = 2.0
    word_len: int = 6
    num_answers: int = 3


def zipf_counts(num_words: int, vocab_size: int, alpha: float = 2.0) -> list[int]:
    """Occurrences of the word at each rank k: int(num_words * k^-alpha / zeta(alpha)); only alpha=2 is exact."""
    if alpha != 2.0:
        raise ValueError(f"alpha={alpha}: only alpha=2 (zeta(2) = pi^2/6) is supported")
    return [int(num_words * k**-alpha / ZETA_2) for k in range(1, vocab_size + 1)]


class FweGenerator(TaskGenerator):
    tokens_to_generate = templates()["freq_words_extraction"]["tokens_to_generate"]

    def __init__(self, ctx: GenContext, cfg: FweConfig = FweConfig()):
        super().__init__(ctx)
        self.cfg = cfg
        self.spec = templates()["freq_words_extraction"]
        self.max_len = ctx.length - self.tokens_to_generate
        self.vocab_size = self.max_len // 50
        if self.vocab_size <= cfg.num_answers:
            raise ValueError(f"fwe needs length >= {50 * (cfg.num_answers + 1) + self.tokens_to_generate}")

    @property
    def increment(self) -> int:
        return max(self.max_len // 32, 1)

    def _vocab(self) -> list[str]:
        rng, size = self.ctx.rng, self.vocab_size
        vocab = {"".join(rng.choices(string.ascii_lowercase, k=self.cfg.word_len)) for _ in range(size)}
        while len(vocab) < size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=self.cfg.word_len)))
        ordered = sorted(vocab)
        self.ctx.fresh_shuffle(ordered)
        ordered[0] = "..."
        return ordered

    def build(self, units: int) -> Draft:
        vocab = self._vocab()
        counts = zipf_counts(units, self.vocab_size, self.cfg.alpha)
        coded = [w for w, c in zip(vocab, counts) for _ in range(c)]
        self.ctx.fresh_shuffle(coded)
        prefix = self.spec["answer_prefix"]
        text = self.ctx.wrapper.prompt(self.spec["template"].format(context=" ".join(coded)), prefix)
        answers = vocab[1 : 1 + self.cfg.num_answers]
        return Draft(text, answers, prefix, {"answer_counts": counts[1 : 1 + self.cfg.num_answers]})

    def find_units(self) -> int:
        """Linear search: from max_len // 6 words grow by max_len // 32 while the prompt is under max_len, then
        step back once."""
        units, step = self.max_len // 6, self.increment
        while self.ctx.count(self.build(units).text) < self.max_len:
            units += step
        return max(units - step, step)
