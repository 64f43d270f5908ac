"""LongBench metric semantics: golden vectors LB1-LB23 (docs/evaluation.md §1.5), hand-worked quirk vectors, aggregation."""

from __future__ import annotations

import difflib
import importlib
import sys

import pytest

from eval.longbench import metrics as m
from eval.longbench.benchmark import score_records, summarize
from eval.longbench.data import DEFAULT_TASKS

TWO_THIRDS = pytest.approx(2 / 3, abs=1e-4)


def records(preds: list[str], answers: list[list[str]], **extra) -> list[dict]:
    return [
        {"pred": p, "answers": a, "all_classes": None, "length": 100, **extra} for p, a in zip(preds, answers)
    ]


# ---- golden vectors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vid", "fn", "pred", "gold", "expected"),
    [
        ("LB1", m.qa_f1_score, "The Eiffel Tower", "Eiffel Tower", 1.0),
        ("LB2", m.qa_f1_score, "Paris, France.", "Paris", TWO_THIRDS),
        ("LB4", m.qa_f1_score, "a", "a", 0.0),
        ("LB5", m.qa_f1_score, "\u201cParis\u201d", "Paris", 0.0),
        ("LB7", m.count_score, "There are 12 unique paragraphs, not 13.", "12", 0.5),
        ("LB8", m.retrieval_score, "Paragraph 7 or Paragraph 17", "Paragraph 7", 0.5),
        ("LB9", m.retrieval_zh_score, "段落3和段落13", "段落3", 0.5),
        ("LB12", m.code_sim_score, "```python\n# comment\nreturn x + 1\n```", "return x + 1", 1.0),
        ("LB13", m.code_sim_score, "return x+1", "return x + 1", 0.91),
        (
            "LB15",
            m.rouge_score,
            "the cat sat on the mat",
            "the cat is on the mat",
            pytest.approx(0.8, abs=1e-7),
        ),
        ("LB16", m.rouge_score, "the cat sat", "the cat sat on the mat", pytest.approx(0.75, abs=1e-7)),
        ("LB17", m.rouge_score, "The cat sat.", "the cat sat", TWO_THIRDS),
        ("LB19", m.rouge_score, "", "abc", 0.0),
        ("LB20", m.qa_f1_zh_score, "答案是北京", "北京", 0.5),
    ],
)
def test_golden_metric_vectors(vid, fn, pred, gold, expected):
    assert fn(pred, gold) == expected, vid


def test_lb3_hotpotqa_sample_takes_max_over_answers():
    assert m.sample_score("hotpotqa", "in 1998", ["1998", "the year 1998"]) == TWO_THIRDS


def test_lb6_triviaqa_first_line_rule():
    recs = records(["\nParis\nQuestion: what?", "London"], [["Paris"], ["Paris", "Lyon"]])
    assert score_records("triviaqa", recs)[0].value == 50.0
    # Without the rule (any other QA task) the first sample only reaches 0.5.
    assert m.sample_score("hotpotqa", "\nParis\nQuestion: what?", ["Paris"]) == 0.5


def test_lb11_classification_two_matches():
    assert m.classification_score("City or Country", "City", ["City", "Country", "Other location"]) == 0.5


def test_lb23_passage_count_task_score():
    scores = score_records("passage_count", records(["3", "3 or 4", "none"], [["3"], ["3"], ["3"]]))
    assert [(s.metric, s.value, s.n) for s in scores] == [("count_score", 50.0, 3)]


# ---- hand-worked quirk vectors --------------------------------------------------------------------------------


def test_classification_list_mutation_skips_the_next_element():
    # M = [Other, location, Other location]. Removing "Other" shifts "location" into the visited slot, so it is
    # never checked and stays: M ends as [location, Other location] -> 1/2. A mutation-free loop would give 1.0.
    classes = ["Other", "location", "Other location"]
    assert m.classification_score("Other location", "Other location", classes) == 0.5


def test_classification_is_case_sensitive_and_needs_classes():
    assert m.classification_score("city", "City", ["City", "Country"]) == 0.0
    with pytest.raises(ValueError, match="all_classes"):
        m.classification_score("City", "City", None)


def test_rouge_dots_only_hypothesis_scores_zero():
    assert m.rouge_score("...", "the cat sat") == 0.0
    assert m.rouge_score("the cat sat", ". .") == pytest.approx(0.0)


def test_rouge_whitespace_piece_counts_as_an_empty_word():
    # "the cat. " -> sentences ["the cat", ""]: distinct hyp words {the, cat, ""} = 3, ref words 2, LCS set 2.
    # R = 1, P = 2/3, F = 2PR / (P + R + 1e-8).
    expected = 2 * (2 / 3) * 1 / (2 / 3 + 1 + 1e-8)
    assert m.rouge_score("the cat. ", "the cat") == pytest.approx(expected, abs=1e-12)
    assert m.rouge_score("the cat", "the cat") == pytest.approx(0.999999995, abs=1e-12)


def test_rouge_splits_decimals_and_zh_keeps_full_stop():
    # "3.5 percent" -> sentences ["3", "5 percent"]: hyp words {3, 5, percent}; ref "5 percent" -> {5, percent}.
    assert m.rouge_score("3.5 percent", "5 percent") == pytest.approx(2 * (2 / 3) / (2 / 3 + 1 + 1e-8))
    assert m.rouge_zh_score("北京。", "北京。") == pytest.approx(0.999999995, abs=1e-12)


def test_google_rouge_alternative_uses_multiset_lcs():
    # LCS "the cat sat" = 3 of 6 reference tokens (the pltrdy rouge gives 0.75 with set semantics).
    assert m.rouge_score_google("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)


def test_code_sim_empty_and_skipped_lines():
    assert m.code_sim_score("", "return x") == 0.0
    assert m.code_sim_score("# only a comment\n// and another", "return x") == 0.0
    assert m.code_sim_score("```", "") == 1.0  # no line qualifies -> "" and "" == "" is checked first: 100
    assert m.code_sim_score("\n\n    return x", "return x") == 0.8  # indentation kept: 2*8/20


def test_retrieval_and_count_without_digits():
    assert m.retrieval_score("I cannot tell which paragraph it is.", "Paragraph 4") == 0.0
    assert m.count_score("many", "3") == 0.0
    with pytest.raises(ValueError, match="paragraph id"):
        m.retrieval_score("Paragraph 1", "no id here")


def test_normalize_answer_order_and_ascii_punctuation():
    assert m.normalize_answer("The-End of AN era!") == "theend of era"
    assert m.normalize_answer("\u2014Paris\u2014") == "\u2014paris\u2014"
    assert m.normalize_zh_answer("《北京》 ，市") == "《北京市"


def test_first_line_rule_strips_only_newlines():
    # Leading spaces survive: " Country" still contains the class, but "\n" lines after the first are dropped.
    classes = ["City", "Country"]
    assert m.sample_score("trec", "\n\n Country\nCity", ["Country"], classes) == 1.0
    assert m.sample_score("trec", "Country City", ["Country"], classes) == 0.5


def test_sample_score_is_never_negative_and_handles_no_answers():
    assert m.sample_score("qasper", "anything", []) == 0.0


def _difflib_fuzz(monkeypatch):
    """fuzzywuzzy.fuzz imported fresh with python-Levenshtein made unimportable (its pure-python path)."""
    monkeypatch.setitem(sys.modules, "Levenshtein", None)
    for mod in ("fuzzywuzzy.fuzz", "fuzzywuzzy.StringMatcher"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    with pytest.warns(UserWarning, match="pure-python SequenceMatcher"):
        fuzz = importlib.import_module("fuzzywuzzy.fuzz")
    monkeypatch.delitem(sys.modules, "fuzzywuzzy.fuzz")  # do not leak this copy to other tests
    assert fuzz.SequenceMatcher is difflib.SequenceMatcher
    return fuzz


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("return x+1", "return x + 1"),
        ("abcdefgh", "aXYZWVUT"),  # 2*1/16 = 12.5 -> round-half-even 12
        ("", ""),
        ("", "x"),
        ("    self.count += 1", "self.count += 1"),
        ("for i in range(10):", "x = " + "ab c" * 60),  # second string >= 200 chars: difflib autojunk applies
        ("a" * 250, "ab" * 120),
    ],
)
def test_fuzz_ratio_equals_fuzzywuzzy_difflib_path(monkeypatch, a, b):
    fuzz = _difflib_fuzz(monkeypatch)
    assert m.fuzz_ratio(a, b) == fuzz.ratio(a, b)


def test_fuzz_ratio_rounding_and_none():
    assert m.fuzz_ratio("abcdefgh", "aXYZWVUT") == 12
    assert m.fuzz_ratio(None, "x") == 0


# ---- LongBench-E buckets --------------------------------------------------------------------------------------


def test_length_buckets_edges():
    assert [m.length_bucket(x) for x in (0, 3999, 4000, 7999, 8000, 20000)] == [
        "0-4k",
        "0-4k",
        "4-8k",
        "4-8k",
        "8k+",
        "8k+",
    ]


def test_bucket_scores_and_no_score_for_an_empty_bucket():
    """An empty bucket (the reference's NaN) has no score: a NaN row would make the job's result unreadable."""
    recs = [
        {"pred": "1998", "answers": ["1998"], "length": 1000},
        {"pred": "no", "answers": ["1998"], "length": 3999},
        {"pred": "1998", "answers": ["1998"], "length": 4000},
    ]
    scores = {s.metric: (s.value, s.n, s.samples) for s in score_records("hotpotqa", recs, longbench_e=True)}
    assert scores["qa_f1_score"][:2] == (pytest.approx(66.67), 3)
    assert scores["qa_f1_score@0-4k"] == (50.0, 2, [100.0, 0.0])
    assert scores["qa_f1_score@4-8k"] == (100.0, 1, [100.0])
    assert "qa_f1_score@8k+" not in scores


def test_bucket_score_rounds_as_the_reference_numpy_mean():
    """scorer_e's round(100 * np.mean(x), 2): these 8 scores sum to 2.65 exactly in decimals, mean 0.33125, so
    33.125 rounds half to even: 33.12 (numpy's pairwise sum and rounding), where round(100 * sum / n, 2) of the
    sequential float sum gives 33.13."""
    xs = [1 / 3, 2 / 3, 0.2, 0.125, 2 / 3, 0.125, 1 / 3, 0.2]
    assert round(100 * sum(xs) / len(xs), 2) == 33.13  # the sequential sum lands above the tie
    assert m.bucket_scores(xs, [100] * 8) == {"0-4k": 33.12}
    assert m.bucket_scores(xs, [5000] * 4 + [9000] * 4) == {"4-8k": 33.12, "8k+": 33.12}  # halves: 1.325 / 4


def test_task_score_rounds_to_two_decimals():
    assert m.task_score([1 / 3, 1 / 3, 1 / 3]) == 33.33
    assert m.task_score([2 / 3]) == 66.67


# ---- leaderboard aggregation ----------------------------------------------------------------------------------


def test_categories_partition_the_16_english_tasks():
    assert sorted(t for ts in m.EN_CATEGORY_TASKS.values() for t in ts) == sorted(DEFAULT_TASKS)
    assert tuple(m.EN_CATEGORY_TASKS) == m.CATEGORIES == tuple(m.ZH_CATEGORY_TASKS)


def test_english_average_gpt35_example():
    # the leaderboard's GPT-3.5 row: category means -> its Avg 44.0 is avg_categories
    category_values = dict(zip(m.CATEGORIES, (39.8, 38.7, 26.5, 67.1, 54.1, 37.8)))
    scores = {t: category_values[c] for c, ts in m.EN_CATEGORY_TASKS.items() for t in ts}
    out = summarize(scores)
    assert out["avg_categories"] == 44.0
    # the paper's Average over the same 16 task scores: (3 * (39.8 + 38.7 + 26.5 + 67.1) + 2 * (54.1 + 37.8)) / 16
    assert out["avg"] == round(sum(scores.values()) / 16, 2) == 43.76
    assert {c: out[c] for c in m.CATEGORIES} == category_values


def test_avg_is_the_papers_task_mean_and_avg_categories_the_leaderboards():
    scores = dict.fromkeys(DEFAULT_TASKS, 0.0) | {
        "narrativeqa": 30.0,
        "qasper": 60.0,
        "multifieldqa_en": 90.0,
    }
    scores |= {"lcc": 40.0, "repobench-p": 80.0}
    out = summarize(scores)
    assert out["Single-Doc QA"] == 60.0 and out["Code"] == 60.0
    assert out["avg"] == 18.75  # (30 + 60 + 90 + 40 + 80) / 16: the paper's Average
    assert out["avg_categories"] == 20.0  # (60 + 0 + 0 + 0 + 0 + 60) / 6: the leaderboard's
    assert "avg_zh" not in out


def test_subset_averages_and_chinese_average_kept_apart():
    assert summarize({"narrativeqa": 30.0, "lcc": 50.0}) == {
        "Single-Doc QA": 30.0, "Code": 50.0, "avg": 40.0, "avg_categories": 40.0
    }  # fmt: skip
    zh = {
        "multifieldqa_zh": 10.0,
        "dureader": 20.0,
        "vcsum": 30.0,
        "lsht": 40.0,
        "passage_retrieval_zh": 50.0,
    }
    out = summarize(zh | {"lcc": 60.0, "repobench-p": 80.0})
    assert out["avg_zh"] == round((10 + 20 + 30 + 40 + 50 + 70) / 6, 2)
    assert out["Code"] == 70.0
    assert out["avg"] == 70.0 and out["avg_categories"] == 70.0  # the Chinese tasks never enter them
    assert set(out) == {"Code", "avg", "avg_categories", "avg_zh"}


def test_score_records_names_missing_fields():
    with pytest.raises(ValueError, match=r"hotpotqa prediction record 0 lacks \['length'\]"):
        score_records("hotpotqa", [{"pred": "x", "answers": ["x"]}], longbench_e=True)
    with pytest.raises(ValueError, match="no prediction records"):
        score_records("hotpotqa", [])


@pytest.mark.parametrize(
    ("record", "match"),
    [
        # a string is iterated letter by letter: "Paris" scored 0 against the answers P, a, r, i, s
        ({"pred": "Paris", "answers": "Paris"}, r"answers='Paris' must be a non-empty list of strings"),
        ({"pred": None, "answers": ["Paris"]}, r"pred=None must be a string"),
        ({"pred": "Paris", "answers": []}, r"answers=\[\] must be a non-empty list"),
        (
            {"pred": "Paris", "answers": ["Paris"], "all_classes": "Paris"},
            r"all_classes='Paris' must be a list",
        ),
    ],
)
def test_malformed_prediction_records_are_refused_by_name(record, match):
    from eval.ruler.benchmark import RulerBenchmark

    with pytest.raises(ValueError, match=f"narrativeqa prediction record 1: {match}"):
        score_records("narrativeqa", [{"pred": "a", "answers": ["a"]}, record])
    ruler = object.__new__(RulerBenchmark)  # scoring needs no tokenizer
    with pytest.raises(ValueError, match=f"vt prediction record 1: {match}"):
        ruler.score("vt", [{"pred": "a", "answers": ["a"]}, record])
