"""Variable tracking (RULER `variable_tracking.py`, docs/evaluation.md §2.4): one chain of `VAR X = VAR Y` hops in noise.

Every prompt carries one in-context example, generated once from the bare template and re-randomised (names and
value) for each sample, then placed right after the model template's opening and followed by a blank line, as the
official generator does (`randomize_icl(example) + '\n'` before the task template). The example's haystack is sized
like any RULER prompt: its question and answer prefix fit 500 tokens; its answer names, appended afterwards, are
not counted.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from .generate import NOISE, Draft, GenContext, PromptWrapper, TaskGenerator, templates

EXAMPLE_LENGTH = 500
EXAMPLE_VALUE = 12345


@dataclass(frozen=True)
class VtConfig:
    num_chains: int = 1
    num_hops: int = 4


def _noise_units(num_noises: int, chain_len: int) -> list[str]:
    """`num_noises` noise blocks; too few blocks for the chain are split into sentences, as RULER does."""
    units = [NOISE] * num_noises
    if len(units) <= chain_len:
        units = [s.strip() + "." for block in units for s in block.split(".") if s.strip()]
    return units


class VtGenerator(TaskGenerator):
    tokens_to_generate = templates()["variable_tracking"]["tokens_to_generate"]

    def __init__(self, ctx: GenContext, cfg: VtConfig = VtConfig(), is_example: bool = False):
        super().__init__(ctx)
        self.cfg, self.is_example = cfg, is_example
        self.name_len = 3 if is_example else 5
        self.hops = min(10, cfg.num_hops) if is_example else cfg.num_hops
        self.spec = templates()["variable_tracking"]
        self.example: tuple[str, list[str]] | None = None
        if is_example:
            self.tokens_to_generate = 0
        else:
            self.example = self._make_example()

    @property
    def increment(self) -> int:
        if self.is_example:
            return 5
        return 10 if self.ctx.length >= 4096 else 5

    def _names(self, count: int, size: int, taken: set[str]) -> list[str]:
        """`count` distinct random uppercase names of `size` letters (none equal to `VAR` or in `taken`)."""
        names: list[str] = []
        while len(names) < count:
            name = "".join(self.ctx.rng.choices(string.ascii_uppercase, k=size))
            if name not in names and name not in taken and name != "VAR":
                names.append(name)
        return names

    def _chains(self) -> tuple[list[list[str]], list[list[str]]]:
        names = self._names((self.hops + 1) * self.cfg.num_chains, self.name_len, set())
        groups = [names[i : i + self.hops + 1] for i in range(0, len(names), self.hops + 1)]
        chains = []
        for i, group in enumerate(groups):
            value = EXAMPLE_VALUE if self.is_example and i == 0 else self.ctx.np_rng.randint(10000, 99999)
            chain = [f"VAR {group[0]} = {value}"]
            chain += [f"VAR {group[j + 1]} = VAR {group[j]} " for j in range(self.hops)]
            chains.append(chain)
        return groups, chains

    def build(self, units: int) -> Draft:
        groups, chains = self._chains()
        lines = _noise_units(units, len(chains[0]))
        for chain in chains:
            slots = sorted(self.ctx.rng.sample(range(len(lines)), len(chain)))
            for offset, (slot, line) in enumerate(zip(slots, chain)):
                lines.insert(slot + offset, line)
        context = "\n".join(lines).replace(". \n", ".\n")
        value = chains[0][0].split("=")[-1].strip()
        task_text = self.spec["template"].format(context=context, query=value, num_v=self.hops + 1)
        prefix = self.spec["answer_prefix"].format(query=value, num_v=self.hops + 1)
        if self.is_example:  # the bare template plus prefix (no model template); the answer is appended later
            return Draft(task_text + prefix, groups[0], prefix)
        example = self._randomised_example() + "\n"
        return Draft(self.ctx.wrapper.prompt(task_text, prefix, before_task=example), groups[0], prefix)

    def _make_example(self) -> tuple[str, list[str]]:
        ctx = GenContext(self.ctx.tokenizer, PromptWrapper(), EXAMPLE_LENGTH, self.ctx.seed)
        # The example draws from this task's streams, so it is fixed by the seed and generated first.
        ctx.rng, ctx.np_rng = self.ctx.rng, self.ctx.np_rng
        gen = VtGenerator(ctx, self.cfg, is_example=True)
        draft, _, _ = gen.draw(gen.find_units())
        return draft.text + " " + " ".join(draft.answers) + "\n", draft.answers

    def _randomised_example(self) -> str:
        """The example with fresh names (same lengths) and a fresh 5-digit value, replaced simultaneously."""
        assert self.example is not None
        text, names = self.example
        mapping = dict(zip(names, self._names(len(names), len(names[0]), set(names))))
        mapping[str(EXAMPLE_VALUE)] = str(self.ctx.np_rng.randint(10000, 99999))
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, mapping)) + r")\b")
        return pattern.sub(lambda m: mapping[m.group(0)], text)
