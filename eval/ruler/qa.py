"""QA tasks (RULER `qa.py`, docs/evaluation.md §2.4): gold documents hidden among distractors, from local dataset files.

qa_1 reads SQuAD v2.0 dev (`dev-v2.0.json`), qa_2 HotpotQA dev distractor (`hotpot_dev_distractor_v1.json`).
Neither can be downloaded here, so both need a path; sample i uses question i (sequential, not random).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .generate import Draft, GenContext, TaskGenerator, templates

QA_TASKS = ["qa_1", "qa_2"]
_NEEDS = {
    "qa_1": ("squad_path", "SQuAD v2.0 dev set (dev-v2.0.json)"),
    "qa_2": ("hotpot_path", "HotpotQA dev distractor set (hotpot_dev_distractor_v1.json)"),
}
DOCUMENT = "Document {i}:\n{document}"


@dataclass(frozen=True)
class QaItem:
    query: str
    outputs: list[str]
    gold: list[int]  # document indices that must be in the context
    more: list[int]  # same-article documents, preferred as distractors


@dataclass(frozen=True)
class QaData:
    docs: list[str]
    items: list[QaItem]
    source: str
    sha256: str


def _squad(data: dict) -> tuple[list[str], list[tuple[str, list[str], list[str], list[str]]]]:
    docs = sorted({p["context"] for article in data["data"] for p in article["paragraphs"]})
    raw = []
    for article in data["data"]:
        contexts = [p["context"] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                if qa.get("is_impossible") or not qa["answers"]:
                    continue
                others = [c for c in contexts if c != p["context"]]
                raw.append((qa["question"], [a["text"] for a in qa["answers"]], [p["context"]], others))
    return docs, raw


def _hotpot(data: list) -> tuple[list[str], list[tuple[str, list[str], list[str], list[str]]]]:
    def doc(par: list) -> str:
        return par[0] + "\n" + "".join(par[1])

    docs = sorted({doc(par) for ex in data for par in ex["context"]})
    raw = [(ex["question"], [ex["answer"]], [doc(par) for par in ex["context"]], []) for ex in data]
    return docs, raw


def load_qa(task: str, path: str | None) -> QaData:
    arg, what = _NEEDS[task]
    if path is None or not Path(path).is_file():
        raise ValueError(f"{task} needs the {what} as a local file: set benchmark.{arg}=FILE (got {path!r})")
    raw_bytes = Path(path).read_bytes()
    try:
        parsed = json.loads(raw_bytes)
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"benchmark.{arg}={path!r} is not a JSON file ({what} expected): {err}") from None
    try:
        docs, raw = (_squad if task == "qa_1" else _hotpot)(parsed)
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"benchmark.{arg}={path!r} is not in the {what} format: {err!r}") from err
    index = {d: i for i, d in enumerate(docs)}
    items = [
        QaItem(q, outs, [index[d] for d in dict.fromkeys(gold)], [index[d] for d in dict.fromkeys(more)])
        for q, outs, gold, more in raw
    ]
    return QaData(docs, items, str(path), hashlib.sha256(raw_bytes).hexdigest())


class QaGenerator(TaskGenerator):
    tokens_to_generate = templates()["qa"]["tokens_to_generate"]
    increment = 10

    def __init__(self, ctx: GenContext, data: QaData):
        super().__init__(ctx)
        self.data = data
        self.spec = templates()["qa"]
        self.index = 0  # the question the next draft uses

    @property
    def max_units(self) -> int:
        return len(self.data.docs)

    def _documents(self, item: QaItem, num_docs: int) -> list[str]:
        if num_docs >= len(self.data.docs):
            chosen = list(range(len(self.data.docs)))
        elif num_docs - len(item.gold) > len(item.more):
            taken = set(item.gold) | set(item.more)
            rest = [i for i in range(len(self.data.docs)) if i not in taken]
            chosen = item.gold + item.more + self.ctx.rng.sample(rest, num_docs - len(taken))
        else:
            chosen = item.gold + self.ctx.rng.sample(item.more, max(num_docs - len(item.gold), 0))
        docs = [self.data.docs[i] for i in chosen]
        self.ctx.fresh_shuffle(docs)
        return docs

    def build(self, units: int) -> Draft:
        item = self.data.items[self.index]
        docs = self._documents(item, units)
        context = "\n\n".join(DOCUMENT.format(i=i + 1, document=d) for i, d in enumerate(docs))
        prefix = self.spec["answer_prefix"]
        text = self.ctx.wrapper.prompt(
            self.spec["template"].format(context=context, query=item.query), prefix
        )
        return Draft(text, list(item.outputs), prefix, {"question_index": self.index})

    def generate(self, n: int) -> list[tuple[Draft, int]]:
        if n > len(self.data.items):
            raise ValueError(f"n={n} but {self.data.source} has only {len(self.data.items)} usable questions")
        units = self.find_units()  # sized on question 0
        out = []
        for i in range(n):
            self.index = i
            draft, total, used = self.draw(units)
            draft.meta["num_haystack"] = used
            out.append((draft, total))
        return out
