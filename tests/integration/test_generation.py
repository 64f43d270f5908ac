"""`mustafar.generate`: greedy tokens equal transformers' `generate`, and a left-padded batch equals running each
sample alone (tokens, measured sparsity, the pruned cache itself) for every policy family and both modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mustafar.attention import attach, new_cache
from mustafar.config import KVConfig
from mustafar.generation import generate

# 101 tokens pad the others by 64, 31 and 0 columns: pad counts on and off the 32-token group grid
LENGTHS = (37, 70, 101)
BUDGETS = (9, 4, 12)  # different stop points per row


def prompts(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 256, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(model, prompt, n, eos=None, min_new=0):
    ids = torch.tensor([prompt])
    cache = new_cache(model, KVConfig())
    with attach(model, cache), torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            past_key_values=cache,
            max_new_tokens=n,
            min_new_tokens=min_new or None,
            eos_token_id=eos,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def test_dense_policy_gives_the_tokens_of_hf_generate(tiny_llama):
    prompt = prompts()[1]
    free = hf_greedy(tiny_llama, prompt, 12)
    assert generate(tiny_llama, KVConfig(), [prompt], 12)[0].tokens == free
    # stop at the 3rd generated token's id, and with min_new_tokens past it (the stop id is banned until then)
    stop = free[2]
    first = free.index(stop)
    for min_new in (0, first + 2):
        want = hf_greedy(tiny_llama, prompt, 12, eos=[stop], min_new=min_new)
        got = generate(tiny_llama, KVConfig(), [prompt], 12, stop_ids=[stop], min_new_tokens=min_new)[0]
        assert got.tokens == want
        assert got.stopped_by == ("stop_id" if want[-1] == stop else "max_new_tokens")
    assert hf_greedy(tiny_llama, prompt, 12, eos=[stop])[-1] == stop  # the stop case was exercised


def test_dense_batch_equals_each_prompt_alone(tiny_llama):
    ps = prompts()
    batched = generate(tiny_llama, KVConfig(), ps, list(BUDGETS))
    for p, n, out in zip(ps, BUDGETS, batched):
        assert out.tokens == hf_greedy(tiny_llama, p, n)
        assert out.prompt_tokens == len(p) and len(out.tokens) == n


POLICIES = {
    "token-magnitude": KVConfig(k_sparsity=0.5, v_sparsity=0.7),
    "token-magnitude-w0": KVConfig(k_sparsity=0.5, v_sparsity=0.7, window=0),
    "token-output-aware": KVConfig(k_sparsity=0.6, k_scorer="output_aware", v_sparsity=0.5, v_scorer="output_aware"),
    "token-reference-rule-w0": KVConfig(k_sparsity=0.7, v_sparsity=0.5, keep_rule="reference", window=0),
    "channel-magnitude": KVConfig(k_sparsity=0.5, k_direction="channel", v_sparsity=0.7, v_direction="channel"),
    "channel-output-aware-w0": KVConfig(
        k_sparsity=0.5, k_direction="channel", k_scorer="output_aware",
        v_sparsity=0.7, v_direction="channel", v_scorer="output_aware", window=0,
    ),
    "channel-output-aware-reference": KVConfig(
        v_sparsity=0.5, v_direction="channel", v_scorer="output_aware", keep_rule="reference"
    ),
    "think-k": KVConfig(k_sparsity=0.5, k_scorer="think", v_sparsity=0.5),
    # one side per channel, the other per token or unpruned (one pruner for the whole batch)
    "channel-v-only": KVConfig(v_sparsity=0.5, v_direction="channel"),
    "token-k-channel-v": KVConfig(k_sparsity=0.5, v_sparsity=0.5, v_direction="channel"),
}  # fmt: skip
CASES = [(name, "mask") for name in POLICIES] + [
    (name, "compressed")
    for name in (
        "token-magnitude",
        "token-reference-rule-w0",
        "channel-magnitude",
        "channel-output-aware-w0",
        "think-k",
        "channel-v-only",
        "token-k-channel-v",
    )
]


def run(model, policy, ps, budgets, stop_ids=()):
    cache = new_cache(model, policy)
    outs = generate(model, policy, ps, list(budgets), stop_ids=stop_ids, cache=cache)
    return outs, cache


def row_cache(cache, b, pad):
    """Row b's cached K and V (pads dropped) of every layer, zeros at pruned entries."""
    return [tuple(t[b, :, pad:] for t in layer.dense_view()) for layer in cache.layers]


@pytest.mark.parametrize("name,mode", CASES)
def test_batch_prunes_each_row_as_if_it_ran_alone(tiny_llama, name, mode):
    policy = KVConfig(**{**POLICIES[name].to_dict(), "mode": mode})
    ps = prompts()
    # row 2's 6th token ends it early (and any row that meets it): stop points differ from the budgets
    stop = run(tiny_llama, policy, [ps[2]], [BUDGETS[2]])[0][0].tokens[5]
    solo = [run(tiny_llama, policy, [p], [n], stop_ids=[stop]) for p, n in zip(ps, BUDGETS)]
    batched, cache = run(tiny_llama, policy, ps, BUDGETS, stop_ids=[stop])
    pads = [max(LENGTHS) - n for n in LENGTHS]
    assert batched[2].stopped_by == "stop_id" and len({len(o.tokens) for o in batched}) > 1
    longest = max(len(o.tokens) for o in batched)
    for b, (out, (alone, alone_cache)) in enumerate(zip(batched, solo)):
        assert out.tokens == alone[0].tokens
        mine, theirs = out.stats, alone[0].stats
        assert (mine.k_kept, mine.k_judged, mine.v_kept, mine.v_judged) == (
            theirs.k_kept, theirs.k_judged, theirs.v_kept, theirs.v_judged,
        )  # fmt: skip
        assert mine.dense_bytes == theirs.dense_bytes
        assert mine.kv_payload_bytes == theirs.kv_payload_bytes
        if len(out.tokens) == longest:  # in step with the batch to the end: the caches must agree
            for (k, v), (k1, v1) in zip(row_cache(cache, b, pads[b]), row_cache(alone_cache, 0, 0)):
                torch.testing.assert_close(k, k1, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(v, v1, rtol=1e-5, atol=1e-5)
                assert torch.equal(k == 0, k1 == 0) and torch.equal(v == 0, v1 == 0)
    measured = [s for o in batched for s in (o.stats.k_sparsity, o.stats.v_sparsity) if s is not None]
    assert measured and all(0 < s < 1 for s in measured)  # something really was pruned


def test_bad_arguments_are_named(tiny_llama):
    with pytest.raises(ValueError, match="max_new_tokens=-1"):
        generate(tiny_llama, KVConfig(), [[1, 2]], -1)
    with pytest.raises(ValueError, match="2 entries for 1 prompts"):
        generate(tiny_llama, KVConfig(), [[1, 2]], [3, 4])
    with pytest.raises(ValueError, match="at least one token"):
        generate(tiny_llama, KVConfig(), [[1, 2], []], 3)
    vocab = tiny_llama.get_input_embeddings().num_embeddings
    with pytest.raises(
        ValueError, match=f"prompt 1 holds token id {vocab} outside the model's vocabulary of {vocab}"
    ):
        generate(tiny_llama, KVConfig(), [[1, 2], [3, vocab, 4]], 3)
    with pytest.raises(ValueError, match="prompt 0 holds token id -1 outside"):
        generate(tiny_llama, KVConfig(), [[-1, 2]], 3)
    with pytest.raises(ValueError, match=f"pad_id={vocab + 5} is outside"):
        generate(tiny_llama, KVConfig(), [[1, 2], [3]], 3, pad_id=vocab + 5)
    with pytest.raises(ValueError, match="max_new_tokens=2.0 must be an integer >= 0"):
        generate(tiny_llama, KVConfig(), [[1, 2]], 2.0)
    with pytest.raises(ValueError, match="stop_ids holds None, not a token id"):
        generate(tiny_llama, KVConfig(), [[1, 2]], 2, stop_ids=[None])  # a tokenizer without an EOS id
    with pytest.raises(ValueError, match="stop_ids=None must be token ids"):
        generate(tiny_llama, KVConfig(), [[1, 2]], 2, stop_ids=None)
    with pytest.raises(TypeError, match="generate takes a KVConfig as its policy, got dict"):
        generate(tiny_llama, {"k_sparsity": 0.5}, [[1, 2]], 2)


def test_integer_arguments_of_any_kind_mean_the_same(tiny_llama):
    """numpy and tensor integers, one stop id, a tensor of stop ids, a 2-d array of one row per prompt: the same
    tokens as plain ints (stop at the second generated token's id)."""
    ps = prompts()[:2]
    first = generate(tiny_llama, KVConfig(), ps, 6)
    stop = first[0].tokens[1]
    want = [o.tokens for o in generate(tiny_llama, KVConfig(), ps, [6, 6], stop_ids=[stop])]
    assert want[0] == first[0].tokens[: first[0].tokens.index(stop) + 1] and len(want[0]) < 6
    for budget, stops in [
        (np.int64(6), np.array([stop])),
        (torch.tensor(6), torch.tensor([stop])),
        ([np.int64(6), 6], stop),
        (6, np.array([[stop], [stop]])),
        (6, [[stop], [np.int64(stop)]]),
    ]:
        assert [o.tokens for o in generate(tiny_llama, KVConfig(), ps, budget, stop_ids=stops)] == want


def test_hf_generate_on_a_left_padded_batch_prunes_rows_as_if_alone(tiny_llama):
    """`model.generate` with left padding: the cache reads the pads from the attention mask at prefill."""
    policy = KVConfig(k_sparsity=0.5, k_direction="channel", v_sparsity=0.7)
    ps, n = prompts(), 6
    width = max(LENGTHS)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in ps])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
    cache = new_cache(tiny_llama, policy)
    with attach(tiny_llama, cache), torch.inference_mode():
        out = tiny_llama.generate(
            ids, attention_mask=mask, past_key_values=cache, max_new_tokens=n, min_new_tokens=n,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip
    assert cache.layers[0].pads == [width - len(p) for p in ps]
    for b, p in enumerate(ps):
        alone = generate(tiny_llama, policy, [p], n)[0]
        assert out[b, width:].tolist() == alone.tokens
        mine = cache.row_stats()[b]
        assert (mine.k_kept, mine.k_judged, mine.v_kept, mine.v_judged) == (
            alone.stats.k_kept, alone.stats.k_judged, alone.stats.v_kept, alone.stats.v_judged,
        )  # fmt: skip
