"""Every supported model family on a tiny random model: exactness at sparsity 0, mask-mode attention against
softmax attention over an explicitly pruned cache (written here: top-k per token, causal + sliding-window mask,
soft-capping), compressed mode against mask mode, and the refusals where compressed mode cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM

from eval.job import Job
from mustafar import models
from mustafar.architectures import ARCHS, TINY_SLIDING_WINDOW, random_config
from mustafar.attention import attach, attention_modules, mustafar_attention, new_cache, register
from mustafar.config import KVConfig
from mustafar.models import ModelConfig, load, peek_head_dim

VOCAB = 256
HEAD_DIMS = {"llama": 64, "mistral": 64, "qwen2": 128, "qwen3": 64, "phi3": 96, "gemma2": 256, "gemma3": 256}


def family_model(arch: str, **extra):
    sizes = dict(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIMS[arch],
        max_position_embeddings=1024,
        initializer_range=0.1,  # larger than the default so greedy tokens vary and masks/caps change outputs
        tie_word_embeddings=False,  # tied Gemma embeddings (scaled by sqrt(hidden)) repeat one token
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **extra,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(random_config(arch, sizes)).eval()


def greedy(model, ids, n, cache=None, logits=False):
    kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    kwargs |= dict(output_logits=True, return_dict_in_generate=True) if logits else {}
    if cache is None:
        return model.generate(ids, **kwargs)
    with attach(model, cache):
        return model.generate(ids, past_key_values=cache, **kwargs)


def prompt(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_sparsity_zero_gives_stock_greedy_tokens(arch):
    model = family_model(arch)
    ids = prompt(40)
    stock = greedy(model, ids, 16)
    assert len(set(stock[0, 40:].tolist())) >= 4, "degenerate random model: equal tokens would prove nothing"
    assert torch.equal(greedy(model, ids, 16, new_cache(model, KVConfig())), stock)


def topk_pruned(x: torch.Tensor, n_pruned: int, keep: int) -> torch.Tensor:
    """Zero all but the `keep` largest |x| of each of the first n_pruned tokens (ties to the lower channel)."""
    order = torch.sort(x[:, :, :n_pruned].abs(), dim=-1, descending=True, stable=True).indices
    kept = torch.zeros_like(x[:, :, :n_pruned], dtype=torch.bool).scatter(-1, order[..., :keep], True)
    out = x.clone()
    out[:, :, :n_pruned] = torch.where(kept, x[:, :, :n_pruned], 0)
    return out


def is_sliding(config, layer: int) -> bool:
    types = getattr(config, "layer_types", None)
    if types is not None:
        return types[layer] == "sliding_attention"
    return getattr(config, "sliding_window", None) is not None


def reference_decode(q, k, v, scaling, window: int | None, softcap: float | None) -> torch.Tensor:
    """One query (the last position) over dense k/v [B, H_kv, T, D] in float64 -> [B, 1, H_q, D]."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    logits = (q.double() @ k.transpose(-1, -2)) * scaling
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    t = k.shape[2]
    if window is not None:  # the query at position t-1 sees the `window` most recent tokens, itself included
        logits[..., : max(0, t - window)] = float("-inf")
    return (torch.softmax(logits, dim=-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("arch", ARCHS)
def test_mask_mode_attention_equals_attention_over_explicitly_pruned_cache(arch, monkeypatch):
    """Teacher-forced decode: each layer's attention output equals softmax attention over the K/V it was given,
    pruned by hand (every token older than the window), with the layer's sliding window and soft-cap."""
    extra = {"attn_logit_softcapping": 1.0} if arch == "gemma2" else {}  # 50 would not bind on random weights
    model = family_model(arch, **extra)
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.7, window=4)
    cache = new_cache(model, policy)
    dense = {i: ([], []) for i in range(model.config.num_hidden_layers)}
    calls = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        out, w = mustafar_attention(module, query, key, value, attention_mask, **kwargs)
        calls.append((module.layer_idx, query, kwargs["scaling"], out))
        return out, w

    ids = prompt(2 * TINY_SLIDING_WINDOW, seed=1)
    softcap = getattr(model.config, "attn_logit_softcapping", None)
    d = HEAD_DIMS[arch]
    keep_k, keep_v = round(d * (1 - policy.k_sparsity)), round(d * (1 - policy.v_sparsity))
    with attach(model, cache), torch.no_grad():
        AttentionInterface.register("mustafar", recording)
        try:
            for i, layer in enumerate(cache.layers):
                monkeypatch.setattr(layer, "update", recorded_update(layer.update, *dense[i]))
            out = model(ids, past_key_values=cache, use_cache=True)
            for _ in range(4):
                calls.clear()
                out = model(out.logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True)
                assert len(calls) == model.config.num_hidden_layers
                for layer, query, scaling, got in calls:
                    k, v = (torch.cat(parts, dim=2) for parts in dense[layer])
                    n_pruned = k.shape[2] - 1 - policy.window
                    kp, vp = topk_pruned(k, n_pruned, keep_k), topk_pruned(v, n_pruned, keep_v)
                    window = TINY_SLIDING_WINDOW if is_sliding(model.config, layer) else None
                    want = reference_decode(query, kp, vp, scaling, window, softcap)
                    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
                    # the reference has teeth: pruning, the window and the cap each change this output
                    differs = [reference_decode(query, k, v, scaling, window, softcap)]
                    if window is not None:
                        differs.append(reference_decode(query, kp, vp, scaling, None, softcap))
                    if softcap is not None:
                        differs.append(reference_decode(query, kp, vp, scaling, window, None))
                    for other in differs:
                        assert not torch.allclose(got.double(), other, rtol=1e-4, atol=1e-4)
        finally:
            register()  # the real attention function again, for every later test


def recorded_update(update, keys: list, values: list):
    """Wrap a cache layer's update to keep a dense copy of every K/V row it receives."""

    def wrapper(k, v, *args, **kwargs):
        keys.append(k.clone())
        values.append(v.clone())
        return update(k, v, *args, **kwargs)

    return wrapper


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "gemma2"])
def test_compressed_mode_equals_mask_mode(arch):
    """The compressed stores (PyTorch reference path on CPU, any head dim) hold what mask mode's zeros leave."""
    model = family_model(arch)
    ids = prompt(2 * TINY_SLIDING_WINDOW, seed=2)
    runs = {}
    for mode in ("mask", "compressed"):
        policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4, mode=mode)
        runs[mode] = greedy(model, ids, 8, new_cache(model, policy), logits=True)
    assert torch.equal(runs["mask"].sequences, runs["compressed"].sequences)
    for a, b in zip(runs["mask"].logits, runs["compressed"].logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compressed_mode_refuses_soft_capped_attention():
    model = family_model("gemma2")
    cache = new_cache(model, KVConfig(k_sparsity=0.5, mode="compressed"))
    with pytest.raises(ValueError, match="Gemma2ForCausalLM: its attention soft-caps the logits"):
        with attach(model, cache):
            pass
    assert model.config._attn_implementation != "mustafar"  # refused before touching the model


def test_a_gemma3_softcap_field_its_attention_ignores_is_not_refused():
    """Gemma-3's config class keeps Gemma-2's attn_logit_softcapping, but its attention never passes it on: the
    logits do not depend on it, so compressed mode (and the static cache) must run such a model as any other
    rather than refuse it for a soft cap it does not apply."""
    from mustafar.static_cache import static_reason

    capped, plain = family_model("gemma3", attn_logit_softcapping=1.0), family_model("gemma3")
    ids = prompt(2 * TINY_SLIDING_WINDOW, seed=2)
    with torch.no_grad():
        assert torch.equal(capped(ids).logits, plain(ids).logits)
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4, mode="compressed")
    got = greedy(capped, ids, 6, new_cache(capped, policy))
    assert torch.equal(got, greedy(plain, ids, 6, new_cache(plain, policy)))
    assert static_reason(capped, policy, 40) == static_reason(
        plain, policy, 40
    )  # the sliding layers, not a cap


def job_config(*overrides: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "logger=none", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.arch=gemma2", "kv.mode=compressed"],
            "kv.mode=compressed cannot run model tiny: its attention soft-caps the logits "
            "(attn_logit_softcapping=50), which the sparse decode kernel does not apply; use kv.mode=mask",
        ),
        (
            ["model.arch=phi3", "model.architecture.head_dim=48", "kv.mode=compressed"],
            "cannot run model tiny: head_dim=48 is not a multiple of 32",
        ),
        (
            ["model.arch=gemma3", "model.architecture.head_dim=256", "kv.mode=compressed", "device=cuda"],
            "kv.mode=compressed on a GPU supports head_dim 64, 128 (the Triton kernels); model tiny has "
            "head_dim=256",
        ),
        (["model.arch=falcon"], "model.arch='falcon' is not allowed; choose one of llama, mistral, qwen2"),
        (
            ["model.device_map=balanced"],
            "model.device_map='balanced' is not allowed; choose one of null, auto",
        ),
    ],
)
def test_job_config_refusals_name_the_model_and_the_reason(overrides, message, monkeypatch):
    monkeypatch.setattr(models, "cuda_available", lambda: True)  # the GPU refusal is checked without a GPU
    with pytest.raises(ValueError) as err:
        Job.from_config(job_config(*overrides))
    assert message in str(err.value)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_family_composes_as_the_tiny_model(arch):
    """`model=tiny model.arch=<family>` validates, and head dims without Triton kernels run compressed on CPU."""
    mode = "mask" if arch == "gemma2" else "compressed"
    job = Job.from_config(
        job_config(f"model.arch={arch}", "model.architecture.head_dim=96", f"kv.mode={mode}", "device=cpu")
    )
    assert job.model.arch == arch
    assert peek_head_dim(job.model) == 96


@pytest.mark.parametrize("arch", ARCHS)
def test_a_loaded_model_names_its_family_for_the_result_rows(arch):
    """Two `model=tiny` jobs of different families share every other model fact, so rows must carry the family."""
    loaded = load(ModelConfig(**{**job_config()["model"], "arch": arch}), "cpu")
    assert loaded.describe()["model_arch"] == arch


def test_device_map_auto_shards_a_random_model_and_keeps_its_tokens():
    """On a CPU-only host `auto` places every layer on the CPU; the dispatched model must generate what the plain
    one does, with each cache layer on its layer's device."""
    sizes = {**job_config()["model"], "name": "tiny-sharded"}
    plain = load(ModelConfig(**sizes), "cpu").model
    ids = prompt(24)
    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4)
    want = greedy(plain, ids, 6, new_cache(plain, policy))
    sharded = load(ModelConfig(**{**sizes, "device_map": "auto"}), "cpu").model
    assert hasattr(sharded, "hf_device_map")
    cache = new_cache(sharded, policy)
    assert torch.equal(greedy(sharded, ids, 6, cache), want)
    for module, layer in zip(attention_modules(sharded), cache.layers, strict=True):
        assert layer.keys.device == next(module.parameters()).device


def test_device_map_reaches_from_pretrained_for_a_local_checkpoint(tmp_path, monkeypatch):
    """transformers shards at load time (on a CPU-only host nothing observable changes), so watch the call."""
    from transformers import AutoModelForCausalLM as Auto

    loaded = load(ModelConfig(**{**job_config()["model"], "arch": "qwen3"}), "cpu")
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    seen = []
    real = Auto.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Auto, "from_pretrained", classmethod(spy))
    local = load(ModelConfig(name="local", source="local", path=str(tmp_path), device_map="auto"), "cpu")
    assert type(local.model).__name__ == "Qwen3ForCausalLM"
    assert seen == ["auto"]
    assert next(local.model.parameters()).device.type == "cpu"


def test_gemma3_vision_language_checkpoint_prunes_its_text_decoder():
    """gemma3_4b is a Gemma3ForConditionalGeneration: the decoder's facts live in text_config, the vision tower's
    attention is left alone, and text prompts generate the stock tokens at sparsity 0."""
    from transformers import AutoConfig

    from mustafar.architectures import compressed_refusal, head_dim

    text = dict(
        vocab_size=VOCAB + 3,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=256,
        max_position_embeddings=1024,
        sliding_window=TINY_SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        initializer_range=0.1,
    )
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=32
    )
    config = AutoConfig.for_model(
        "gemma3",
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=VOCAB,
        eoi_token_index=VOCAB + 1,
        image_token_index=VOCAB + 2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert head_dim(model.config) == 256
    assert "model gemma3_4b has head_dim=256" in compressed_refusal(model.config, "gemma3_4b", "cuda")
    assert len(attention_modules(model)) == 2  # the decoder's layers only
    ids = prompt(40)
    stock = greedy(model, ids, 12)
    assert len(set(stock[0, 40:].tolist())) >= 4
    assert torch.equal(greedy(model, ids, 12, new_cache(model, KVConfig())), stock)
    cache = new_cache(model, KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4))
    greedy(model, ids, 4, cache)
    assert 0.45 < cache.stats().k_sparsity < 0.55
    # the benchmarks' loop and the static-cache factory read the decoder's config too (they read the top-level one
    # and failed on its missing num_hidden_layers); sliding layers send the factory to the dynamic cache
    from mustafar.graphs import greedy as bench_greedy
    from mustafar.static_cache import static_cache

    policy = KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=4)
    assert len(static_cache(model, policy, 40, 4).layers) == 2
    tokens, _, _ = bench_greedy(model, policy, ids, 4, static=False)
    assert torch.equal(tokens, greedy(model, ids, 4, new_cache(model, policy))[:, 40:])


@pytest.mark.parametrize("masked", [False, True])
def test_softcapped_attention_over_several_queries(masked):
    """The prefill case: 5 queries over 8 keys (3 cached), GQA 2:1, causal by default or from a boolean mask."""
    from mustafar.attention import softcapped_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, h, n, 32, generator=g) * 3 for h, n in ((4, 5), (2, 8), (2, 8)))
    allowed = torch.ones(5, 8, dtype=torch.bool).tril(3)  # query i sits at position 3 + i
    if masked:
        allowed[:, 0] = False  # e.g. a padded first token
    mask = allowed[None, None] if masked else None
    got = softcapped_attention(q, k, v, mask, scaling=0.5, softcap=2.0)
    kr, vr = k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1)
    logits = 2.0 * torch.tanh((q.double() @ kr.transpose(-1, -2)) * 0.5 / 2.0)
    want = (torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1) @ vr).transpose(1, 2)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
