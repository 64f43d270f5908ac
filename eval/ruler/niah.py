"""Needle-in-a-haystack tasks (RULER `niah.py`, docs/evaluation.md §2.4): noise, distractor-needle and essay haystacks."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from functools import cache

from .essays import EssayCorpus, SentenceSplitter
from .generate import NOISE, Draft, GenContext, TaskGenerator, templates, wonderwords_list

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
# round(linspace(0, 100, 40)): the depths (percent of sentences) an essay needle can be inserted at.
DEPTHS = [round(100 * i / 39) for i in range(40)]


@dataclass(frozen=True)
class NiahConfig:
    haystack: str  # "noise" | "needle" | "essay"
    key_type: str  # "words" | "numbers" | "uuids"
    value_type: str
    num_k: int = 1
    num_v: int = 1
    num_q: int = 1


NIAH_TASKS: dict[str, NiahConfig] = {
    "niah_single_1": NiahConfig("noise", "words", "numbers"),
    "niah_single_2": NiahConfig("essay", "words", "numbers"),
    "niah_single_3": NiahConfig("essay", "words", "uuids"),
    "niah_multikey_1": NiahConfig("essay", "words", "numbers", num_k=4),
    "niah_multikey_2": NiahConfig("needle", "words", "numbers"),
    "niah_multikey_3": NiahConfig("needle", "uuids", "uuids"),
    "niah_multivalue": NiahConfig("essay", "words", "numbers", num_v=4),
    "niah_multiquery": NiahConfig("essay", "words", "numbers", num_q=4),
}


@cache
def _adj_noun() -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str], frozenset[str]]:
    adjs = sorted(set(wonderwords_list("adjectivelist.txt")))
    nouns = sorted(set(wonderwords_list("nounlist.txt")))
    return tuple(adjs), tuple(nouns), frozenset(adjs), frozenset(nouns)


def random_word_pair(rng: random.Random) -> str:
    """Uniform draw from the set of distinct `adjective-noun` strings, without building its 6.2M entries.

    Hyphenated list entries make a few strings reachable from several (adjective, noun) pairs; accepting a pair
    with probability 1/multiplicity makes every distinct string equally likely, as RULER's sorted set does.
    """
    adjs, nouns, adj_set, noun_set = _adj_noun()
    while True:
        word = f"{rng.choice(adjs)}-{rng.choice(nouns)}"
        splits = sum(
            1 for i, ch in enumerate(word) if ch == "-" and word[:i] in adj_set and word[i + 1 :] in noun_set
        )
        if splits == 1 or rng.random() < 1 / splits:
            return word


def random_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return random_word_pair(rng)
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}; expected numbers, words or uuids")


def format_query(keys: list[str]) -> str:
    """`k` for one key, else `k1, k2, k3, and k4`."""
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def niah_template(cfg: NiahConfig) -> tuple[str, str, str]:
    """(template, answer_prefix, value type word) after the singular rewrite for one query x one value."""
    spec = templates()["niah"]
    template, prefix, type_v = spec["template"], spec["answer_prefix"], cfg.value_type
    if cfg.num_q * cfg.num_v == 1:
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template, prefix = template.replace(old, new), prefix.replace(old, new)
        type_v = type_v[:-1]
    return template, prefix, type_v


class NiahGenerator(TaskGenerator):
    tokens_to_generate = templates()["niah"]["tokens_to_generate"]

    def __init__(
        self,
        ctx: GenContext,
        cfg: NiahConfig,
        essays: EssayCorpus | None = None,
        splitter: SentenceSplitter | None = None,
    ):
        super().__init__(ctx)
        if cfg.haystack == "essay" and (essays is None or splitter is None):
            raise ValueError("essay haystack needs an essay corpus and a sentence splitter")
        self.cfg = cfg
        self.num_k = max(cfg.num_k, cfg.num_q)
        self.essays, self.splitter = essays, splitter
        self.template, self.answer_prefix, self.type_v = niah_template(cfg)

    @property
    def increment(self) -> int:
        if self.cfg.haystack == "essay":
            return 500
        return 25 if self.ctx.length >= 4096 else 5

    def _needles(self) -> tuple[list[str], list[list[str]], list[str]]:
        """Distinct keys, their values and the shuffled needle sentences."""
        rng, cfg = self.ctx.rng, self.cfg
        keys: list[str] = []
        values: list[list[str]] = []
        needles: list[str] = []
        while len(keys) < self.num_k:
            key = random_value(rng, cfg.key_type)
            if key in keys:
                continue
            keys.append(key)
            values.append([random_value(rng, cfg.value_type) for _ in range(cfg.num_v)])
            needles += [NEEDLE.format(type_needle_v=cfg.value_type, key=key, value=v) for v in values[-1]]
        self.ctx.fresh_shuffle(needles)
        return keys, values, needles

    def _insert_lines(self, lines: list[str], needles: list[str]) -> tuple[str, list[float]]:
        """Insert needles between haystack lines at distinct random slots; join with newlines."""
        slots = sorted(self.ctx.rng.sample(range(len(lines)), len(needles)), reverse=True)
        for slot, needle in zip(slots, needles):
            lines.insert(slot, needle)
        return "\n".join(lines), sorted(100 * s / (len(lines) - len(needles)) for s in slots)

    def _distractors(self, count: int, keys: list[str], values: list[list[str]]) -> list[str]:
        """Distractor needles; a distractor never reuses a real key or value, so the answer stays unique."""
        taken = set(keys) | {v for vs in values for v in vs}
        out: list[str] = []
        while len(out) < count:
            key = random_value(self.ctx.rng, self.cfg.key_type)
            value = random_value(self.ctx.rng, self.cfg.value_type)
            if key not in taken and value not in taken:
                out.append(NEEDLE.format(type_needle_v=self.cfg.value_type, key=key, value=value))
        return out

    def _essay(self, words: int, needles: list[str]) -> tuple[str, list[float]]:
        assert self.essays is not None and self.splitter is not None
        sentences = self.splitter.split(self.essays.first_words(words))
        depths = sorted(self.ctx.rng.sample(DEPTHS, len(needles)))
        cuts = [0] + [int(len(sentences) * d / 100) for d in depths] + [len(sentences)]
        parts: list[str] = []
        for i in range(1, len(cuts)):
            parts.append(" ".join(sentences[cuts[i - 1] : cuts[i]]))
            if i - 1 < len(needles):
                parts.append(needles[i - 1])
        return " ".join(p for p in parts if p), [float(d) for d in depths]

    def build(self, units: int) -> Draft:
        keys, values, needles = self._needles()
        if self.cfg.haystack == "noise":
            context, depths = self._insert_lines([NOISE] * units, needles)
        elif self.cfg.haystack == "needle":
            context, depths = self._insert_lines(self._distractors(units, keys, values), needles)
        else:
            context, depths = self._essay(units, needles)
        picked = self.ctx.rng.sample(range(self.num_k), self.cfg.num_q)
        answers = [v for i in picked for v in values[i]]
        query = format_query([keys[i] for i in picked])
        task_text = self.template.format(type_needle_v=self.type_v, context=context, query=query)
        prefix = self.answer_prefix.format(type_needle_v=self.type_v, query=query)
        return Draft(self.ctx.wrapper.prompt(task_text, prefix), answers, prefix, {"depth": depths})

    def generate(self, n: int) -> list[tuple[Draft, int]]:
        out = super().generate(n)
        for draft, _ in out:
            # Token index at which each answer's needle value starts (RULER's token_position_answer).
            draft.meta["token_position_answer"] = {
                a: self.ctx.count(draft.text[: draft.text.index(a)]) for a in draft.answers
            }
        return out
