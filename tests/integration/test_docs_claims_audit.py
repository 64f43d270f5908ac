"""The numbers and rules stated in docs/ checked against what the code does, each by an independent computation
(plain Python or PyTorch written from the doc's words, never the code's own helpers) or by reading the doc's
tables and comparing them cell by cell with the code's constants."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

import mustafar.attention as mattn
from eval.averages import summarize
from eval.longbench import metrics
from eval.longbench.data import CHINESE_TASKS, DEFAULT_TASKS, EXPECTED_COUNTS
from eval.longbench.prompts import MAXLEN, SKIP_CHAT_TASKS
from eval.ruler.benchmark import ZERO_DOWNLOAD_TASKS
from eval.ruler.common_words import CweGenerator
from eval.ruler.freq_words import FweGenerator
from eval.ruler.metrics import metric_name as ruler_metric
from eval.ruler.niah import NIAH_TASKS, NiahGenerator
from eval.ruler.qa import QaGenerator
from eval.ruler.variable_tracking import VtGenerator
from mustafar.attention import attach, new_cache
from mustafar.cache import MustafarLayer
from mustafar.cache_kwarg import cache_kwargs
from mustafar.config import KEEP_RULES, KVConfig
from mustafar.formats.bitmap import fixed_token_nbytes, variable_token_nbytes
from mustafar.formats.fp8 import pow2_scale, quantize
from mustafar.models import LoadedModel, ModelConfig
from mustafar.pruning.keep import (
    exact_keep,
    reference_think_keep,
    reference_topk_keep,
    threshold_mask,
    word_quotas,
)
from mustafar.static_cache import unsupported_reason

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def table_after(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after the line that starts with `heading` (header row first)."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not all(set(c) <= set("-: ") for c in cells):
            rows.append(cells)
    return rows


def number(text: str) -> int:
    return int(text.replace(",", ""))


def topk_lower(score: torch.Tensor, keep: int) -> torch.Tensor:
    """The `keep` largest entries of every row along the last dim, equal scores to the lower index (Python sort)."""
    flat = score.reshape(-1, score.shape[-1])
    out = torch.zeros(flat.shape, dtype=torch.bool)
    for r, row in enumerate(flat.tolist()):
        for i in sorted(range(len(row)), key=lambda i: (-row[i], i))[:keep]:
            out[r, i] = True
    return out.view(score.shape)


# ---------------------------------------------------------------------------------------------------------------
# docs/evaluation.md


def test_longbench_task_table_matches_the_code():
    """§1.2: language, category, metric, max new tokens, chat template and first-line rule of every task."""
    rows = table_after(doc("evaluation.md"), "### 1.2 Tasks")
    assert rows[0] == [
        "task", "language", "category", "metric", "max new tokens", "chat template", "first line only",
    ]  # fmt: skip
    categories = {t: c for c, ts in metrics.EN_CATEGORY_TASKS.items() for t in ts}
    categories |= {t: c for c, ts in metrics.ZH_CATEGORY_TASKS.items() for t in ts}
    tasks = [r[0] for r in rows[1:]]
    assert sorted(tasks) == sorted(MAXLEN) == sorted(metrics.TASK_METRIC)
    for task, language, category, metric, max_new, chat, first_line in rows[1:]:
        code = "code" if task in ("lcc", "repobench-p") else "zh" if task in CHINESE_TASKS else "en"
        assert language == code, task
        assert category == categories[task], task
        assert metric == metrics.metric_name(task), task
        assert int(max_new) == MAXLEN[task], task
        assert (chat == "yes") == (task not in SKIP_CHAT_TASKS), task
        assert (first_line == "yes") == (task in metrics.FIRST_LINE_TASKS), task


def test_official_sizes_add_up_to_the_stated_total():
    """§1.1: the stated total for the 16 English tasks is the sum of the official counts the loader expects."""
    text = " ".join(doc("evaluation.md").split())
    stated = re.search(r"\(500 each\): ([\d,]+) for the 16 English tasks", text)
    assert stated, "the sentence with the official total is gone"
    assert len(DEFAULT_TASKS) == 16
    assert number(stated.group(1)) == sum(EXPECTED_COUNTS[t] for t in DEFAULT_TASKS) == 3750


def test_the_prompt_budget_example_is_what_an_8192_token_model_gets():
    """§1.4: the budget is the context window minus 500; the doc's worked number must be the code's for the
    8,192-token window of Llama-3-8B-Instruct and SmolLM2 (the models the tables run)."""
    config = LlamaConfig(max_position_embeddings=8192)
    loaded = LoadedModel(SimpleNamespace(config=config), None, ModelConfig(name="llama3", source="random"))
    assert loaded.prompt_budget == 8192 - 500 == 7692
    assert "7,692" in doc("evaluation.md")
    given = LoadedModel(SimpleNamespace(config=config), None, ModelConfig(source="random", max_length=7500))
    assert given.prompt_budget == 7500  # model.max_length overrides it, as the doc says


def test_ruler_task_table_matches_the_code():
    """§2.2: every task's tokens to generate and metric; the default tasks are the six zero-download ones."""
    rows = table_after(doc("evaluation.md"), "### 2.2 Tasks")
    generators = {
        "vt": VtGenerator,
        "cwe": CweGenerator,
        "fwe": FweGenerator,
        "qa_1": QaGenerator,
        "qa_2": QaGenerator,
    }
    generators |= {t: NiahGenerator for t in NIAH_TASKS}
    assert sorted(r[0] for r in rows[1:]) == sorted(generators)
    for row in rows[1:]:
        task, tokens, metric = row[0], int(row[5]), row[6]
        assert generators[task].tokens_to_generate == tokens, task
        assert ruler_metric(task) == metric, task
        if task in NIAH_TASKS:
            cfg = NIAH_TASKS[task]
            assert int(row[4]) == cfg.num_v * cfg.num_q, task  # answers per sample
    default = re.search(
        r"Six tasks need no download and are the default[^:]*: ([^.]+)\.", doc("evaluation.md")
    )
    assert [t.strip() for t in default.group(1).split(",")] == ZERO_DOWNLOAD_TASKS


def test_the_papers_dense_average_is_the_mean_of_the_16_task_scores():
    """§1.6: `avg` of the 16 English tasks is the paper's Average (dense Llama-3-8B-Instruct: 43.19)."""
    numbers = json.loads((ROOT / "eval/report/paper_numbers.json").read_text(encoding="utf-8"))
    values = dict(numbers["tables"]["main_grid"]["rows"][0]["values"])
    average = values.pop("Average")
    assert sorted(values) == sorted(DEFAULT_TASKS)
    assert average == 43.19 == summarize("longbench", values)["avg"] == round(sum(values.values()) / 16, 2)


def test_worked_metric_examples():
    """§1.5's worked examples, computed as the doc states them."""
    assert metrics.qa_f1_score("Paris, France.", "Paris") == pytest.approx(2 / 3)
    assert metrics.rouge_score("the cat sat", "the cat sat on the mat") == pytest.approx(
        0.7499999953, abs=1e-10
    )
    assert metrics.rouge_score("a b c", "a b c") == pytest.approx(0.999999995, abs=1e-12)
    assert metrics.retrieval_score("Paragraph 7 or Paragraph 17", "Paragraph 7") == 0.5
    assert metrics.normalize_answer("the-end") == "theend"


# ---------------------------------------------------------------------------------------------------------------
# docs/method.md


def test_keep_count_table_is_what_the_rules_keep():
    """§4's table, each count from the doc's formula and from the code (the reference magnitude count measured on
    a tie-free row)."""
    rows = table_after(doc("method.md"), "Entries kept per token")
    for d, s, exact, ref_mag, ref_oa, ref_think in (
        [int(r[0]), float(r[1]), *map(int, r[2:])] for r in rows[1:]
    ):
        assert exact == math.floor((1 - s) * d + 0.5) == exact_keep(d, s)
        assert ref_mag == d - int(s * d) + 1 == int(threshold_mask(torch.randperm(d).float() + 1, s).sum())
        assert ref_oa == int(d * (1 - s)) == reference_topk_keep(d, s)
        assert ref_think == d - int(d * s) == reference_think_keep(d, s)


def test_word_quota_worked_cases():
    """§4 `word`: quotas ⌊k / W⌋ plus one for the first k mod W words, for the doc's worked cases."""
    for d, s, quotas in (
        (128, 0.7, (10, 10, 9, 9)),
        (128, 0.5, (16, 16, 16, 16)),
        (64, 0.7, (10, 9)),
        (64, 0.5, (16, 16)),
        (128, 0.9, (4, 3, 3, 3)),
    ):
        k, w = exact_keep(d, s), d // 32
        assert quotas == tuple(k // w + (g < k % w) for g in range(w)) == word_quotas(d, k)


def _capture_generation(model, policy: KVConfig, prompt: int, new: int, monkeypatch):
    """Greedy steps through the pruning cache, recording each call's queries and keys (what the attention function
    observed) and each layer's new, unpruned K / V as they enter the cache."""
    calls: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
    fresh: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    observe, update = mattn._observe, MustafarLayer.update

    def spy_observe(layer, query, key, mask, scaling, softcap):
        assert mask is None  # unpadded causal prompt and single-query steps: plain causal attention
        calls.append((layer.layer_idx, query.clone(), key.clone(), scaling))
        return observe(layer, query, key, mask, scaling, softcap)

    def spy_update(self, k, v, *args, **kwargs):
        fresh.append((self.layer_idx, k.clone(), v.clone()))
        return update(self, k, v, *args, **kwargs)

    monkeypatch.setattr(mattn, "_observe", spy_observe)
    monkeypatch.setattr(MustafarLayer, "update", spy_update)
    ids = torch.randint(0, 256, (1, prompt), generator=torch.Generator().manual_seed(1))
    cache = new_cache(model, policy)
    with attach(model, cache), torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache))
        for _ in range(new - 1):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), use_cache=True, **cache_kwargs(model, cache))
    return cache, calls, fresh


def test_output_aware_scores_average_every_observation_while_dense(tiny_llama, monkeypatch):
    """§1, §3, §4 at the model: K per-token output-aware (q̄ = mean over ≤ 32 queries of |q|, summed over the
    group) and V per-channel output-aware (a = causal softmax weight, mean over queries, summed over the group),
    each token scored with the mean of the observations it got while among the W + 1 dense tokens; V ranks the
    T − W prompt tokens per channel at prefill, then 32-token groups from there. Rebuilt from the raw K / V."""
    prompt, window, new, d, groups = 40, 4, 34, 64, 2  # new - 1 = 33 decode steps complete one V group
    policy = KVConfig(
        k_sparsity=0.7, k_scorer="output_aware",
        v_sparsity=0.5, v_direction="channel", v_scorer="output_aware", window=window,
    )  # fmt: skip
    cache, calls, fresh = _capture_generation(tiny_llama, policy, prompt, new, monkeypatch)
    for idx, layer in enumerate(cache.layers):
        k = torch.cat([k for i, k, _ in fresh if i == idx], 2)[0].float()  # [H_kv, T, D]
        v = torch.cat([v for i, _, v in fresh if i == idx], 2)[0].float()
        heads, total = k.shape[0], k.shape[1]
        q_sum, a_sum, seen = torch.zeros(heads, total, d), torch.zeros(heads, total), torch.zeros(total)
        for _, query, key, scaling in (c for c in calls if c[0] == idx):
            q, key = query[0, :, -32:].float(), key[0].float()  # the observed queries, the keys attended
            t, m = key.shape[1], q.shape[1]
            q_bar = torch.stack([q[h * groups : (h + 1) * groups].abs().mean(1).sum(0) for h in range(heads)])
            a = torch.zeros(heads, t)
            for hq in range(heads * groups):
                logits = (q[hq] @ key[hq // groups].T) * scaling
                future = torch.arange(t)[None] > torch.arange(t - m, t)[:, None]
                a[hq // groups] += torch.softmax(logits.masked_fill(future, -math.inf), -1).mean(0)
            dense = max(0, t - query.shape[2] - window)  # the whole prompt at prefill, the W + 1 newest after
            q_sum[:, dense:t] += q_bar[:, None]
            a_sum[:, dense:t] += a[:, dense:t]
            seen[dense:t] += 1
        q_mean, a_mean = q_sum / seen[None, :, None], a_sum / seen[None]
        want_k, final = k.clone(), total - window
        want_k[:, :final][~topk_lower(q_mean[:, :final] * k[:, :final].abs(), exact_keep(d, 0.7))] = 0
        want_v, start = v.clone(), prompt - window
        spans = [(0, start, exact_keep(start, 0.5))]
        spans += [(g, g + 32, exact_keep(32, 0.5)) for g in range(start, total - window - 31, 32)]
        assert spans[-1][1] == 68  # the first decode group is complete
        for lo, hi, keep in spans:
            score = (a_mean[:, lo:hi, None] * v[:, lo:hi].abs()).transpose(1, 2)  # rank tokens per channel
            want_v[:, lo:hi][~topk_lower(score, keep).transpose(1, 2)] = 0
        assert torch.equal(layer.keys[0].float(), want_k), idx
        assert torch.equal(layer.values[0].float(), want_v), idx


@pytest.mark.parametrize(("keep_rule", "kept"), [("exact", 19), ("reference", 20)])
def test_think_drops_whole_prompt_channels_by_the_documented_scores(tiny_llama, monkeypatch, keep_rule, kept):
    """§2, §3, §5: ThinK-K ranks channels by mean_t k² × (mean over ≤ 32 queries of q², averaged over the group),
    ThinK-V by mean_t v², over every prompt token (no window); generated tokens stay dense and are not judged."""
    prompt, new, d, groups = 50, 6, 64, 2
    policy = KVConfig(k_sparsity=0.7, k_scorer="think", v_sparsity=0.7, v_scorer="think", keep_rule=keep_rule)
    cache, calls, fresh = _capture_generation(tiny_llama, policy, prompt, new, monkeypatch)
    for idx, layer in enumerate(cache.layers):
        q = next(c for c in calls if c[0] == idx)[1][0, :, -32:].float()
        k = torch.cat([k for i, k, _ in fresh if i == idx], 2)[0].float()
        v = torch.cat([v for i, _, v in fresh if i == idx], 2)[0].float()
        for h in range(k.shape[0]):
            factor = q[h * groups : (h + 1) * groups].square().mean(1).mean(0)
            for x, score, got in (
                (k, k[h, :prompt].square().mean(0) * factor, layer.keys[0, h]),
                (v, v[h, :prompt].square().mean(0), layer.values[0, h]),
            ):
                want = x[h].clone()
                want[:prompt, ~topk_lower(score, kept)] = 0
                assert torch.equal(got.float(), want), (idx, h)
    stats = cache.stats()
    judged = 2 * 2 * prompt * d  # layers x KV heads x prompt tokens x D: generated tokens are never judged
    assert (stats.k_judged, stats.k_kept, stats.v_kept) == (judged, judged * kept // d, judged * kept // d)


def test_static_caches_serve_the_fixed_count_keep_rules_the_doc_lists():
    """docs/static_decode.md scope: per-token magnitude under `exact`, `word` and every N:M rule (calibrated ones
    included) in both modes, `reference` in mask mode only."""
    scope = " ".join(doc("static_decode.md").split())
    assert "`word` or an N:M rule" in scope
    for rule in (r for r in KEEP_RULES if r != "reference"):
        for mode in ("mask", "compressed"):
            policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule=rule, mode=mode)
            assert unsupported_reason(policy, 64) is None, (rule, mode)
    assert unsupported_reason(KVConfig(k_sparsity=0.5, keep_rule="reference"), 64) is None
    assert unsupported_reason(KVConfig(k_sparsity=0.5, keep_rule="reference", mode="compressed"), 64)


def test_fp8_scale_is_the_smallest_power_of_two_that_fits():
    """§9: s = 2^ceil(log2(max|x| / 448)) (computed in float64 here), 1 for an all-zero token; a value that rounds
    to zero keeps its sign."""
    g = torch.Generator().manual_seed(0)
    amax = torch.exp(torch.randn(20000, generator=g, dtype=torch.float64) * 15).float()
    amax = torch.cat([amax[(amax > 1e-30) & (amax < 1e30)], torch.tensor([448.0, 448.00003, 896.0, 1.75])])
    want = torch.tensor([2.0 ** math.ceil(math.log2(a / 448)) for a in amax.double().tolist()])
    assert torch.equal(pow2_scale(amax).double(), want)
    codes, scale = quantize(torch.tensor([[1.0, -1e-6, 0.0, 0.0]]))
    assert codes[0].tolist() == [0x78, 0x80, 0x00, 0x00] and scale.item() == 2.0**-8
    assert quantize(torch.zeros(1, 8))[1].item() == 1.0


# ---------------------------------------------------------------------------------------------------------------
# docs/formats.md


def test_bytes_per_token_tables():
    """§2: fixed D/8 + padded_keep·2, variable D/8 + 4 + nnz·2 at the reference magnitude count, fp8
    D/8 + padded8(keep) + 4, each row of the doc's tables recomputed."""
    text = doc("formats.md")
    for row in table_after(text, "Worked numbers for fp16")[1:]:
        d, s, kept, slot = int(row[0]), float(row[1]), int(row[2]), int(row[3])
        fixed, variable = number(row[4].split("=")[-1]), number(row[6].split("=")[-1])
        assert kept == exact_keep(d, s) and slot == -(-kept // 8) * 8
        assert fixed == d // 8 + 2 * slot == fixed_token_nbytes(d, kept, 2)
        assert float(row[5]) == pytest.approx(fixed / (2 * d), abs=5e-5)
        nnz = d - int(s * d) + 1
        assert variable == d // 8 + 4 + 2 * nnz == variable_token_nbytes(d, nnz, 2)
        assert float(row[7]) == pytest.approx(variable / (2 * d), abs=5e-4)
    for row in table_after(text, "FP8 stores (§1): ")[1:]:
        d, s, kept, slot = int(row[0]), float(row[1]), int(row[2]), int(row[3])
        total = number(row[4].split("=")[-1])
        assert kept == exact_keep(d, s) and slot == -(-kept // 8) * 8
        assert total == d // 8 + slot + 4 == fixed_token_nbytes(d, kept, 2, "fp8")
        assert float(row[5]) == pytest.approx(total / (2 * d), abs=5e-4)


def test_compressed_prefill_sizes_its_stores_once_with_decode_headroom(tiny_llama, monkeypatch):
    """§3, §4: a prefill's flush sizes each store to the stored tokens + 256; kv_bytes counts every store buffer at
    capacity plus the dense tail, kv_payload_bytes the stored tokens by the closed form, dense_bytes T·B·H·D·i·2."""
    monkeypatch.setenv("MUSTAFAR_KERNEL_BACKEND", "torch")
    model = copy.deepcopy(tiny_llama).to(torch.float16)  # the session's fp32 model stays as it is
    prompt, window, layers, heads, d = 300, 32, 2, 2, 64
    cache = new_cache(model, KVConfig(k_sparsity=0.7, v_sparsity=0.7, mode="compressed"))
    ids = torch.randint(0, 256, (1, prompt), generator=torch.Generator().manual_seed(3))
    with attach(model, cache), torch.inference_mode():
        model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache))
    stored, token = prompt - window, d // 8 + 2 * 24  # keep 19 in a 24-value slot
    assert all(layer.stores[s].capacity == stored + 256 for layer in cache.layers for s in "kv")
    tail = 2 * heads * window * d * 2
    stats = cache.stats()
    assert stats.kv_bytes == layers * (2 * heads * (stored + 256) * token + tail)
    assert stats.kv_payload_bytes == layers * (2 * heads * stored * token + tail)
    assert stats.dense_bytes == prompt * heads * d * 2 * 2 * layers
