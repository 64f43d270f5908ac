"""The README's "use it in your own code" example runs as written (hub loading swapped for the tiny model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import mustafar
from mustafar.cache import UnattachedCacheError
from mustafar.config import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Use it in your own code", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_and_prunes(tiny_llama, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mustafar.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    model = tiny_llama
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
    # the tiny model's vocabulary is 256 ids: fold the real tokenizer's ids into it
    embed = model.get_input_embeddings()
    monkeypatch.setattr(embed, "forward", lambda ids: torch.nn.functional.embedding(ids % 256, embed.weight))
    namespace: dict = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    stats = namespace["cache"].stats()
    assert stats.k_sparsity == pytest.approx(0.7, abs=0.02)
    assert stats.v_sparsity == pytest.approx(0.7, abs=0.02)
    assert "CacheStats" in capsys.readouterr().out


def test_public_api_is_small_and_complete():
    assert set(mustafar.__all__) == {
        "CacheStats",
        "ConfigError",
        "KVConfig",
        "MustafarCache",
        "UnattachedCacheError",
        "attach",
        "generate",
        "prune",
        "sparse_decode_attention",
    }
    assert all(hasattr(mustafar, name) for name in mustafar.__all__)


def test_unattached_cache_fails_loudly(tiny_llama):
    cache = mustafar.MustafarCache(mustafar.KVConfig(k_sparsity=0.5), tiny_llama.config.num_hidden_layers)
    ids = torch.randint(0, 256, (1, 40))
    with pytest.raises(UnattachedCacheError, match="not attached"):
        tiny_llama.generate(ids, past_key_values=cache, max_new_tokens=2, do_sample=False, pad_token_id=0)


def test_a_cache_attached_to_one_model_fails_loudly_in_another(tiny_llama):
    """Attached to model A and passed to model B, the cache was filled by B's own attention, which prunes
    nothing (k_judged 0), without a word."""
    import copy

    from transformers import LlamaForCausalLM

    other = LlamaForCausalLM(copy.deepcopy(tiny_llama.config)).eval()  # its own config: sdpa attention
    ids = torch.randint(0, 256, (1, 40))
    with mustafar.prune(tiny_llama, k_sparsity=0.5) as cache:
        with pytest.raises(UnattachedCacheError, match="used by a model it is not attached to"):
            other.generate(ids, past_key_values=cache, max_new_tokens=3, do_sample=False, pad_token_id=0)


def test_cache_is_unbound_after_the_block(tiny_llama):
    ids = torch.randint(0, 256, (1, 40))
    with mustafar.prune(tiny_llama, k_sparsity=0.5) as cache:
        tiny_llama.generate(ids, past_key_values=cache, max_new_tokens=2, do_sample=False, pad_token_id=0)
    with pytest.raises(UnattachedCacheError):
        tiny_llama.generate(ids, past_key_values=cache, max_new_tokens=2, do_sample=False, pad_token_id=0)


def test_prune_rejects_bad_fields(tiny_llama):
    with pytest.raises(ConfigError, match="k_sparsity=1.5"):
        with mustafar.prune(tiny_llama, k_sparsity=1.5):
            pass
    with pytest.raises(ConfigError, match="unknown kv key"):
        with mustafar.prune(tiny_llama, sparsity=0.5):
            pass


def test_prune_takes_a_policy_a_mapping_or_keywords_and_names_anything_else(tiny_llama):
    """The three spellings of a policy give the same cache policy; a bare number or a string is refused naming
    its type, before anything is attached."""
    spellings = [mustafar.KVConfig(k_sparsity=0.5), {"k_sparsity": 0.5}]
    policies = []
    for spelling in spellings:
        with mustafar.prune(tiny_llama, spelling) as cache:
            policies.append(cache.policy)
    with mustafar.prune(tiny_llama, k_sparsity=0.5) as cache:
        policies.append(cache.policy)
    assert policies[0] == policies[1] == policies[2]
    for bad in (0.5, "k50v50"):
        with pytest.raises(TypeError, match=f"got {type(bad).__name__}"):
            with mustafar.prune(tiny_llama, bad):
                pass
