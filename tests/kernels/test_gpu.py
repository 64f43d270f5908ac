"""On a GPU: compressed mode with the real Triton kernels against mask mode, inside a model (skipped on CPU).

Teacher-forced: both caches see the same tokens, so logits are compared step by step without greedy near-ties
sending the two runs down different paths.
"""

from __future__ import annotations

import pytest
import torch

from mustafar.attention import attach, new_cache
from mustafar.config import KVConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def forced_logits(model, policy: KVConfig, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    cache = new_cache(model, policy)
    out = []
    with attach(model, cache), torch.inference_mode():
        logits = model(ids[:, :prompt], past_key_values=cache, logits_to_keep=1).logits
        out.append(logits[:, -1])
        for t in range(prompt, ids.shape[1]):
            logits = model(ids[:, t : t + 1], past_key_values=cache).logits
            out.append(logits[:, -1])
    return torch.stack(out, 1).float()


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "kw",
    [
        {"k_sparsity": 0.5, "v_sparsity": 0.5},
        {"k_sparsity": 0.7, "v_sparsity": 0.7},
        {"k_sparsity": 0.5, "k_scorer": "output_aware", "v_sparsity": 0.7, "v_direction": "channel"},
        {"k_sparsity": 0.5, "v_sparsity": 0.7, "keep_rule": "reference"},
    ],
)
def test_compressed_matches_mask_mode_on_gpu(head_dim, dtype, kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=4096,
    )
    model = LlamaForCausalLM(cfg).to("cuda", dtype).eval()
    ids = torch.randint(0, 512, (3, 700), device="cuda")
    masked = forced_logits(model, KVConfig(**kw), ids, prompt=600)
    compressed = forced_logits(model, KVConfig(mode="compressed", **kw), ids, prompt=600)
    err = ((compressed - masked).norm() / masked.norm()).item()
    assert err < 2e-2, f"relative logit error {err:.2e}"
    agree = (compressed.argmax(-1) == masked.argmax(-1)).float().mean().item()
    assert agree > 0.95, f"top-1 agreement {agree:.3f}"


@pytest.mark.parametrize(
    "launch",
    [
        {},
        dict(version=2),
        dict(version=3),
        dict(version=4),
        dict(version=5, block_n=64, num_warps=4),
        dict(version=5, block_n=16, num_warps=1),
        dict(version=5, block_n=32, num_warps=2),
        dict(version=6),
        dict(version=6, block_n=16),
        dict(version=6, block_n=64),
    ],
    ids=["default", "v2", "v3", "v4", "v5-n64w4", "v5-n16w1", "v5-n32w2", "v6", "v6-n16", "v6-n64"],
)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_versions_match_reference_on_gpu(launch, head_dim, dtype):
    """Every decoder and launch shape (v4/v5 are the GPU-only Gluon ones; the default is v5 with one warp per
    program) against the PyTorch reference on the same stores, with uneven splits and a window, outputs poisoned
    with NaN beforehand."""
    from mustafar.formats import CompressedStore
    from mustafar.kernels import sparse_decode_attention

    torch.manual_seed(launch.get("version", 0))
    b, hkv, n_rep, t, w = 2, 2, 4, 777, 9
    stores = []
    for keep in (head_dim * 3 // 10, head_dim // 2):
        st = CompressedStore(b, hkv, head_dim, dtype, "cuda", keep)
        st.append_topk(torch.randn(b, hkv, t, head_dim, device="cuda", dtype=dtype), keep)
        stores.append(st)
    q = torch.randn(b, hkv * n_rep, head_dim, device="cuda", dtype=dtype)
    kw, vw = (torch.randn(b, hkv, w, head_dim, device="cuda", dtype=dtype) for _ in range(2))
    ref = sparse_decode_attention(q, *stores, kw, vw, head_dim**-0.5, backend="torch")
    for splits in (None, 3):
        out = sparse_decode_attention(
            q,
            *stores,
            kw,
            vw,
            head_dim**-0.5,
            backend="triton",
            num_splits=splits,
            out=torch.full_like(q, float("nan")),
            **launch,
        )
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        assert err <= 1e-2, f"launch {launch}, splits {splits}: relative error {err:.2e}"
