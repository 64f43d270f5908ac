"""Common words extraction (RULER `common_words_extraction.py`, docs/evaluation.md §2.4): find the 10 most repeated words.

A complete few-shot prompt (model template included) with its answer precedes the real prompt; its size and the
repeat counts depend on whether the target length is at least 4096.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from .generate import Draft, GenContext, TaskGenerator, templates, wonderwords_list


@dataclass(frozen=True)
class CweConfig:
    num_cw: int = 10  # the template asks for "the 10 most common words"
    freq_cw: int = 30
    freq_ucw: int = 3
    example_words: int = 40
    example_freq_cw: int = 10
    example_freq_ucw: int = 3

    @classmethod
    def for_length(cls, length: int) -> CweConfig:
        if length >= 4096:
            return cls()
        return cls(freq_cw=6, freq_ucw=1, example_words=20, example_freq_cw=3, example_freq_ucw=1)


@cache
def word_pool(seed: int) -> tuple[str, ...]:
    """Nouns + adjectives + verbs, deduplicated, sorted, then shuffled with Random(seed): 8,166 words."""
    lists = ("nounlist.txt", "adjectivelist.txt", "verblist.txt")
    words = sorted({w for name in lists for w in wonderwords_list(name)})
    random.Random(seed).shuffle(words)
    return tuple(words)


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


class CweGenerator(TaskGenerator):
    tokens_to_generate = templates()["common_words_extraction"]["tokens_to_generate"]
    upper_factor = 2.0
    increment = 10

    def __init__(self, ctx: GenContext):
        super().__init__(ctx)
        self.cfg = CweConfig.for_length(ctx.length)
        self.spec = templates()["common_words_extraction"]
        self.pool = word_pool(ctx.seed)

    @property
    def max_units(self) -> int:
        return len(self.pool)

    def at_max_units(self) -> int:
        raise ValueError(
            f"cwe at length={self.ctx.length} needs more distinct words than the {len(self.pool)} wonderwords "
            "words; RULER then samples its json/english_words.json, which this generator does not support"
        )

    def _word_list(self, num_words: int, freq_cw: int, freq_ucw: int) -> tuple[str, list[str]]:
        words = self.ctx.rng.sample(self.pool, num_words)
        common = words[: self.cfg.num_cw]
        repeated = common * freq_cw + words[self.cfg.num_cw :] * freq_ucw
        self.ctx.fresh_shuffle(repeated)
        return numbered(repeated), common

    def build(self, units: int) -> Draft:
        cfg, wrap, prefix = self.cfg, self.ctx.wrapper, self.spec["answer_prefix"]
        ex_context, ex_common = self._word_list(cfg.example_words, cfg.example_freq_cw, cfg.example_freq_ucw)
        context, common = self._word_list(units, cfg.freq_cw, cfg.freq_ucw)
        fewshot = wrap.prompt(self.spec["template"].format(context=ex_context), prefix)
        fewshot += " " + numbered(ex_common) + "\n"
        text = fewshot + wrap.prompt(self.spec["template"].format(context=context), prefix)
        return Draft(text, common, prefix, {"example_answers": ex_common})
