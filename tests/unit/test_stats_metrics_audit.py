"""Independent re-derivation of eval.stats, eval.averages and the LongBench / RULER metrics from the spec
(docs/evaluation.md §1.5, §1.6, §2.7; README's "≈ = within noise (the CI covers 0 or the sign-flip p >= 0.05)";
the eval.stats docstring: percentile bootstrap, resampling samples within each task, 10,000 resamples, seed 0).

The reference versions below are written from the text of the spec, in plain Python (loops, explicit indices),
not by calling into the project's helpers."""

from __future__ import annotations

import difflib
import itertools
import math
import random
import re
import string
from collections import Counter

import numpy as np
import pytest

from eval import averages, stats
from eval.longbench import metrics as lb
from eval.ruler import metrics as rm

# ---------------------------------------------------------------------------------------------------------------
# (1) bootstrap CI and paired-bootstrap CI, my own loop version (one resample at a time, own seed)


def my_bootstrap(samples, weights=None, resamples=4000, seed=123, level=0.95):
    tasks = list(weights) if weights else list(samples)
    w = weights or {t: 1 / len(tasks) for t in tasks}
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        total = 0.0
        for t in tasks:
            xs = samples[t]
            draw = [xs[rng.randrange(len(xs))] for _ in xs]
            total += w[t] * sum(draw) / len(draw)
        means.append(total)
    means.sort()
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def normal_halfwidth(samples, weights):
    var = sum(weights[t] ** 2 * np.var(samples[t]) / len(samples[t]) for t in weights)
    return 1.96 * math.sqrt(var)


@pytest.mark.parametrize("trial", range(3))
def test_bootstrap_ci_matches_an_independent_bootstrap(trial):
    r = np.random.default_rng(trial)
    samples = {
        "a": list(r.integers(0, 2, 60) * 100.0),
        "b": list(r.random(40) * 100),
        "c": list(r.random(25)),
    }
    weights = {"a": 0.5, "b": 0.25, "c": 0.25}
    got = stats.bootstrap_ci(samples, weights)
    mine = my_bootstrap(samples, weights)
    hw = normal_halfwidth(samples, weights)
    # two Monte Carlo estimates of the same quantiles: agree to a small fraction of the half-width
    assert got[0] == pytest.approx(mine[0], abs=0.1 * hw)
    assert got[1] == pytest.approx(mine[1], abs=0.1 * hw)
    centre = sum(weights[t] * np.mean(samples[t]) for t in weights)
    assert got[0] < centre < got[1]
    # seed handling: same seed → identical, default seed is the documented one
    assert stats.bootstrap_ci(samples, weights) == got == stats.bootstrap_ci(samples, weights, seed=0)
    assert stats.RESAMPLES == 10_000 and stats.SEED == 0 and stats.LEVEL == 0.95


def test_bootstrap_default_weights_are_equal_over_tasks():
    s = {"x": [0.0, 10.0, 20.0], "y": [50.0, 50.0, 80.0, 100.0]}
    assert stats.weighted_mean(s) == pytest.approx((10 + 70) / 2)
    assert stats.bootstrap_ci(s) == stats.bootstrap_ci(s, {"x": 0.5, "y": 0.5})


def my_paired(a, b, weights, resamples=4000, seed=7):
    rng = random.Random(seed)
    diff = sum(w * (np.mean(a[t]) - np.mean(b[t])) for t, w in weights.items())
    boots = []
    for _ in range(resamples):
        tot = 0.0
        for t, w in weights.items():
            n = len(a[t])
            idx = [rng.randrange(n) for _ in range(n)]  # the same indices on both sides
            tot += w * (sum(a[t][i] for i in idx) - sum(b[t][i] for i in idx)) / n
        boots.append(tot)
    boots.sort()
    return diff, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def exact_sign_flip_p(d):
    """Two-sided exact sign-flip p-value: share of the 2^n sign vectors with |mean| >= |observed|."""
    obs = abs(sum(d) / len(d))
    hits = sum(
        abs(sum(s * x for s, x in zip(signs, d)) / len(d)) >= obs - 1e-12
        for signs in itertools.product((-1, 1), repeat=len(d))
    )
    return hits / 2 ** len(d)


@pytest.mark.parametrize("trial", range(3))
def test_paired_test_matches_an_independent_paired_bootstrap_and_exact_sign_flip(trial):
    r = np.random.default_rng(10 + trial)
    n = 12
    a = {"t": list(r.integers(0, 4, n) * 25.0)}
    b = {"t": list(np.clip(np.array(a["t"]) - r.integers(-1, 3, n) * 25.0, 0, 100))}
    got = stats.paired_test(a, b)
    diff, lo, hi = my_paired(a, b, {"t": 1.0})
    assert got.diff == pytest.approx(diff)
    assert got.n == n
    hw = normal_halfwidth({"t": list(np.array(a["t"]) - np.array(b["t"]))}, {"t": 1.0})
    assert got.low == pytest.approx(lo, abs=0.1 * hw + 1e-9)
    assert got.high == pytest.approx(hi, abs=0.1 * hw + 1e-9)
    p = exact_sign_flip_p(list(np.array(a["t"]) - np.array(b["t"])))
    # Monte Carlo p with 10,000 flips: within 4 standard errors of the exact one
    assert got.p_value == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / 10_000) + 2e-4)


def test_paired_test_weighted_average_over_tasks():
    a = {"x": [1.0, 2.0, 3.0, 4.0], "y": [10.0, 0.0, 10.0]}
    b = {"x": [0.0, 2.0, 1.0, 4.0], "y": [0.0, 0.0, 0.0]}
    w = {"x": 0.25, "y": 0.75}
    got = stats.paired_test(a, b, w)
    assert got.diff == pytest.approx(0.25 * 0.75 + 0.75 * 20 / 3)
    assert got.n == 7
    zero = stats.paired_test(a, a, w)
    assert (zero.diff, zero.low, zero.high, zero.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert zero.within_noise


def test_within_noise_rule_as_the_readme_states_it():
    def paired(low, high, p):
        return stats.Paired(diff=(low + high) / 2, low=low, high=high, p_value=p, n=10)

    assert paired(-1.0, 2.0, 0.001).within_noise  # CI covers 0
    assert paired(0.0, 2.0, 0.001).within_noise  # CI touches 0
    assert paired(1.0, 2.0, 0.2).within_noise  # p >= 0.05
    assert not paired(1.0, 2.0, 0.049).within_noise
    # the boundary: p = 0.05 exactly is "p >= 0.05", so within noise
    assert paired(1.0, 2.0, 0.05).within_noise


def test_within_noise_at_an_exact_p_of_one_twentieth():
    # 20 positive differences, 19 sign flips: no flip reaches the observed mean, p = (1 + 0) / (19 + 1) = 0.05
    r = stats.paired_test({"t": [1.0] * 20}, {"t": [0.0] * 20}, resamples=19)
    assert r.p_value == 0.05
    assert r.within_noise


# ---------------------------------------------------------------------------------------------------------------
# (3) LongBench metrics, own versions from §1.5

PUNCT = set(string.punctuation)


def my_norm(s):
    s = s.lower()
    s = "".join(c for c in s if c not in PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def my_f1(pred, gold):
    p, g = my_norm(pred).split(), my_norm(gold).split()
    cg = Counter(g)
    shared = 0
    for tok, k in Counter(p).items():
        shared += min(k, cg.get(tok, 0))
    if shared == 0:
        return 0.0
    prec, rec = shared / len(p), shared / len(g)
    return 2 * prec * rec / (prec + rec)


QA_CASES = [
    ("", "Paris"),
    ("Paris", ""),
    ("", ""),
    ("the a an", "the"),
    ("...!!!", "?"),
    ("Paris, France.", "Paris"),
    ("the-end", "theend"),
    ("“Paris”", "Paris"),
    ("Ünïcödé café", "café ünïcödé"),
    ("North  Korea\tand\nSouth Korea", "korea korea north"),
    ("An apple a day", "apple day"),
    ("thee then anthem", "the then"),
]


@pytest.mark.parametrize("pred,gold", QA_CASES)
def test_qa_f1_edge_cases(pred, gold):
    assert lb.qa_f1_score(pred, gold) == pytest.approx(my_f1(pred, gold))


def test_qa_f1_spec_example_and_random():
    assert lb.qa_f1_score("Paris, France.", "Paris") == pytest.approx(2 / 3)
    assert lb.qa_f1_score("the-end", "theend") == 1.0
    assert lb.qa_f1_score("the", "a") == 0.0
    rng = random.Random(1)
    vocab = ["the", "a", "An", "cat", "Cat,", "dog.", "é", "“x”", "x", "-", "b-c", "bc"]
    for _ in range(500):
        p = " ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 6)))
        g = " ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 6)))
        assert lb.qa_f1_score(p, g) == pytest.approx(my_f1(p, g)), (p, g)


def my_lcs_len(x, y):
    dp = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(len(x)):
        for j in range(len(y)):
            dp[i + 1][j + 1] = dp[i][j] + 1 if x[i] == y[j] else max(dp[i][j + 1], dp[i + 1][j])
    return dp[-1][-1]


def my_rouge_l_one_sentence(pred, gold):
    """rouge 1.0.1 ROUGE-L F for one sentence on each side with distinct words (set size = LCS length)."""
    p, g = pred.split(" "), gold.split(" ")
    lcs = my_lcs_len(g, p)
    prec, rec = lcs / len(set(p)), lcs / len(set(g))
    return 2 * (prec * rec) / (prec + rec + 1e-8)


def test_rouge_spec_examples_and_edges():
    assert lb.rouge_score("the cat sat", "the cat sat on the mat") == pytest.approx(0.7499999953, abs=1e-10)
    assert lb.rouge_score("the cat sat", "the cat sat") == pytest.approx(0.999999995, abs=1e-12)
    assert lb.rouge_score("", "the cat") == 0.0
    assert lb.rouge_score("...", "the cat") == 0.0
    assert lb.rouge_score("The Cat", "the cat") == 0.0  # no lowercasing
    assert lb.sample_score("gov_report", "", ["x"]) == 0.0


def test_rouge_l_random_single_sentences():
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(12)] + ["Ünï", "中文"]
    for _ in range(200):
        p = " ".join(rng.sample(vocab, rng.randrange(1, 8)))
        g = " ".join(rng.sample(vocab, rng.randrange(1, 8)))
        assert lb.rouge_score(p, g) == pytest.approx(my_rouge_l_one_sentence(p, g), abs=1e-12), (p, g)


def my_classification(pred, gold, classes):
    matched = [c for c in classes if c in pred]
    i = 0
    while i < len(matched):  # a list iterator: index advances after every step, removal shifts the tail
        term = matched[i]
        if term in gold and term != gold:
            del matched[matched.index(term)]
        i += 1
    return 1 / len(matched) if gold in matched else 0.0


def test_classification_random_against_own_iterator_simulation():
    rng = random.Random(5)
    classes = ["A", "AB", "ABC", "B", "BC", "C", "Abbreviation", "abbr", "人物", "人"]
    for _ in range(1000):
        cls = rng.sample(classes, rng.randrange(1, len(classes) + 1))
        pred = "".join(rng.sample(classes, rng.randrange(0, 4)))
        gold = rng.choice(cls)
        assert lb.classification_score(pred, gold, cls) == pytest.approx(my_classification(pred, gold, cls))
    assert lb.classification_score("", "A", ["A"]) == 0.0


def my_digit_share(pred, target):
    runs, cur = [], ""
    for ch in pred + " ":
        if ch.isdigit():  # str.isdigit ~ re's \d for these inputs
            cur += ch
        elif cur:
            runs.append(cur)
            cur = ""
    return 0.0 if not runs else sum(r == target for r in runs) / len(runs)


def test_retrieval_and_count_scores():
    assert lb.retrieval_score("Paragraph 7 or Paragraph 17", "Paragraph 7") == 0.5
    assert lb.retrieval_zh_score("段落3", "段落3") == 1.0
    assert lb.count_score("", "3") == 0.0
    assert lb.count_score("There are 03 passages", "3") == 0.0  # digit runs compared as strings
    rng = random.Random(9)
    for _ in range(300):
        pred = "".join(rng.choice("0123456789 aP,.") for _ in range(rng.randrange(0, 20)))
        n = str(rng.randrange(0, 30))
        assert lb.count_score(pred, n) == pytest.approx(my_digit_share(pred, n))
        assert lb.retrieval_score(pred, f"Paragraph {n}") == pytest.approx(my_digit_share(pred, n))
        assert lb.sample_score("passage_count", pred, [n, "0"]) == pytest.approx(
            max(my_digit_share(pred, n), my_digit_share(pred, "0"))
        )


def my_code_sim(pred, gold):
    lines = pred.lstrip("\n").split("\n")
    line = ""
    for ln in lines:
        if "`" in ln or "#" in ln or "//" in ln:
            continue
        line = ln
        break
    if line == gold:
        return 1.0
    if not line or not gold:
        return 0.0
    return int(round(100 * difflib.SequenceMatcher(None, line, gold).ratio())) / 100


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("", ""),
        ("", "x = 1"),
        ("x = 1", ""),
        ("\n\n    x = 1\n", "    x = 1"),
        ("```python\n# c\n// d\n  y = 2", "  y = 2"),
        ("# only\n// comments", "z"),
        ("  return ünïcode", "return unicode"),
        ("a//b\nc", "c"),
    ],
)
def test_code_sim_edges(pred, gold):
    assert lb.code_sim_score(pred, gold) == pytest.approx(my_code_sim(pred, gold))


def test_code_sim_agrees_with_fuzzywuzzy_difflib_path():
    fuzz = pytest.importorskip("fuzzywuzzy.fuzz")
    rng = random.Random(11)
    for _ in range(300):
        a = "".join(rng.choice("ab c()=\n#") for _ in range(rng.randrange(0, 15)))
        b = "".join(rng.choice("ab c()=") for _ in range(rng.randrange(0, 15)))
        assert lb.code_sim_score(a, b) == pytest.approx(my_code_sim(a, b))
        first = next((ln for ln in a.lstrip("\n").split("\n") if "#" not in ln), "")
        assert lb.code_sim_score(a, b) == fuzz.ratio(first, b) / 100


def test_first_line_rule_and_max_over_answers():
    # trec/triviaqa/samsum/lsht: only leading newlines dropped, then cut at the next newline
    assert lb.sample_score("triviaqa", "\n\nParis\nLondon", ["London"]) == 0.0
    assert lb.sample_score("triviaqa", "\n\nParis\nLondon", ["Paris"]) == 1.0
    assert lb.sample_score("triviaqa", " \nLondon", ["London"]) == 0.0  # a space is not a newline
    assert lb.sample_score("hotpotqa", "Paris\nLondon", ["London"]) == pytest.approx(2 / 3)
    assert lb.sample_score("trec", "\nLOC\nHUM", ["HUM"], ["LOC", "HUM"]) == 0.0
    assert lb.sample_score("samsum", "\nthe cat sat\nmore", ["the cat sat"]) == pytest.approx(0.999999995)
    assert lb.sample_score("qasper", "blue whale", ["red", "blue whale", "blue"]) == 1.0
    assert lb.sample_score("qasper", "blue", []) == 0.0
    assert lb.task_score([1.0, 0.0, 0.0]) == 33.33
    assert lb.task_score([2 / 3, 0.5]) == round(100 * (2 / 3 + 0.5) / 2, 2)


def test_qa_f1_zh_strips_punctuation_and_whitespace_per_segment():
    assert lb.qa_f1_zh_score("北京。", "北京") == 1.0
    assert lb.qa_f1_zh_score("，。", "北京") == 0.0
    assert lb.qa_f1_zh_score("", "") == 0.0


# ---------------------------------------------------------------------------------------------------------------
# (4) RULER string match, own versions from §2.7


def my_post(pred):
    pred = pred.strip()
    pred = "".join("\n" if ord(c) < 32 else c for c in pred)
    return pred.strip()


def my_all(preds, refs):
    per = [sum(1 for r in rs if r.lower() in my_post(p).lower()) / len(rs) for p, rs in zip(preds, refs)]
    return round(100 * sum(per) / len(per), 2)


def my_part(preds, refs):
    per = [1.0 if any(r.lower() in my_post(p).lower() for r in rs) else 0.0 for p, rs in zip(preds, refs)]
    return round(100 * sum(per) / len(per), 2)


def test_ruler_string_match_random_and_edges():
    rng = random.Random(2)
    words = ["Apple", "apple", "BANANA", "kiwi", "Ünï", "12345", "a b"]
    for _ in range(300):
        n = rng.randrange(1, 5)
        preds = [
            "\t " + " ".join(rng.choice(words + ["\x01", "\n"]) for _ in range(rng.randrange(0, 6)))
            for _ in range(n)
        ]
        refs = [rng.sample(words, rng.randrange(1, 4)) for _ in range(n)]
        post = [rm.postprocess(p) for p in preds]
        assert post == [my_post(p) for p in preds]
        assert rm.string_match_all(post, refs) == my_all(preds, refs)
        assert rm.string_match_part(post, refs) == my_part(preds, refs)
        assert [s / 100 for s in rm.sample_scores("string_match_all", post, refs)] == pytest.approx(
            [sum(r.lower() in q.lower() for r in rs) / len(rs) for q, rs in zip(post, refs)]
        )
    assert rm.string_match_all(["APPLE and Kiwi"], [["apple", "kiwi", "x"]]) == 66.67
    assert rm.string_match_part(["APPLE"], [["pear", "apple"]]) == 100.0
    assert rm.string_match_all([""], [["a"]]) == 0.0
    # a newline between two words breaks a multi-word reference
    assert rm.string_match_all([rm.postprocess("a\tb")], [["a b"]]) == 0.0
    assert rm.metric_name("qa_1") == "string_match_part" and rm.metric_name("cwe") == "string_match_all"


# ---------------------------------------------------------------------------------------------------------------
# (5) averages, own version from §1.6: means of the reported (2-decimal) task scores, rounded once at the end

EN = {
    "Single-Doc QA": ["narrativeqa", "qasper", "multifieldqa_en"],
    "Multi-Doc QA": ["hotpotqa", "2wikimqa", "musique"],
    "Summarization": ["gov_report", "qmsum", "multi_news"],
    "Few-shot": ["trec", "triviaqa", "samsum"],
    "Synthetic": ["passage_count", "passage_retrieval_en"],
    "Code": ["lcc", "repobench-p"],
}
ZH = {
    "Single-Doc QA": ["multifieldqa_zh"],
    "Multi-Doc QA": ["dureader"],
    "Summarization": ["vcsum"],
    "Few-shot": ["lsht"],
    "Synthetic": ["passage_retrieval_zh"],
    "Code": ["lcc", "repobench-p"],
}
ZH_ONLY = {"multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"}


def mean(xs):
    return sum(xs) / len(xs)


def my_summary(scores):
    out = {}
    cats = {}
    for c, ts in EN.items():
        have = [scores[t] for t in ts if t in scores]
        if have:
            cats[c] = mean(have)
            out[c] = round(cats[c], 2)
    english = [v for t, v in scores.items() if t not in ZH_ONLY]
    if english:
        out["avg"] = round(mean(english), 2)
        out["avg_categories"] = round(mean(list(cats.values())), 2)
    if any(t in ZH_ONLY for t in scores):
        zc = [
            mean([scores[t] for t in ts if t in scores]) for ts in ZH.values() if any(t in scores for t in ts)
        ]
        out["avg_zh"] = round(mean(zc), 2)
    return out


def test_longbench_summary_against_own_version_on_random_subsets():
    rng = random.Random(4)
    all_tasks = [t for ts in EN.values() for t in ts] + sorted(ZH_ONLY)
    for _ in range(300):
        tasks = rng.sample(all_tasks, rng.randrange(1, len(all_tasks) + 1))
        scores = {t: round(rng.uniform(0, 100), 2) for t in tasks}
        got = averages.summarize("longbench", scores)
        mine = my_summary(scores)
        assert set(got) == set(mine), tasks
        for k in mine:
            assert got[k] == pytest.approx(mine[k], abs=0.0100001), (k, tasks)


def test_ruler_avg_is_the_rounded_mean_of_task_scores():
    scores = {"niah_single_1": 100.0, "vt": 66.67, "cwe": 33.33}
    assert averages.summarize("ruler", scores) == {"avg": round((100 + 66.67 + 33.33) / 3, 2)}
