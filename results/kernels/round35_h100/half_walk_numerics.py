"""Round 35: what scoring fp8 keys in fp16 (scatter_ptx.score_asm's packed fma walk) adds to the error that fp8 keys
already carry, on the embedded model's real caches (CPU, no GPU needed).

The walk as the kernel computes it: each query head times the power of two that puts its largest magnitude in
[2, 4), rounded to fp16; per 32-channel bitmap word, the kept codes in descending channel order, each step one fused fp16 multiply-add
(emulated: the exact fp64 value rounded once to fp16); the words' partials added in fp32, times the token's scale.
Against it: the previous walk (fp32 products and sums, here an fp64 product of the same codes) and the unquantised
pruned keys. V is the pruned fp64 values throughout, so the output errors are the keys' alone.

Capture as round 32's lazy_numerics.py: a 4K-token essay prefilled, 8 greedy decode steps whose queries score
every layer's cache (keys pruned per token at s 0.7 under the word rule, the default compressed layout).

    PYTHONPATH=. python results/kernels/round35_h100/half_walk_numerics.py > results/kernels/round35_h100/half_walk_numerics.txt
"""

import math

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from eval.ruler.essays import load_essays
from mustafar.formats.fp8 import quantize
from mustafar.models import ModelConfig, load
from mustafar.pruning.keep import exact_keep, word_topk_mask

SPARSITY, WINDOW, STEPS, PROMPT = 0.7, 32, 8, 4096
QUERIES: list[list[torch.Tensor]] = []


def recording_attention(module, query, key, value, attention_mask, **kwargs):
    if query.shape[2] == 1:  # decode steps only
        QUERIES[-1].append(query.detach().float())
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def half_walk(codes: torch.Tensor, kept: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Scores [T, heads] of unscaled codes [T, D] (zero where pruned) against q [heads, D], as the fp16 walk."""
    x = torch.tensor([math.frexp(m)[1] for m in q.abs().amax(-1).tolist()], dtype=torch.float64)
    scale = 2.0 ** (2 - x)  # per head: max |q| · scale in [2, 4)
    qs = (q.double() * scale[:, None]).half().double()
    out = torch.zeros(codes.shape[0], q.shape[0], dtype=torch.float32)
    for g in range(codes.shape[1] // 32):
        part = torch.zeros(codes.shape[0], q.shape[0], dtype=torch.float16)
        for c in range(32 * g + 31, 32 * g - 1, -1):
            step = (part.double() + codes[:, c, None].double() * qs[None, :, c]).half()
            part = torch.where(kept[:, c, None], step, part)
        out = out + part.float()
    return out.double() / scale[None, :]


def main() -> None:
    torch.manual_seed(0)
    lm = load(ModelConfig(), device="cpu")
    model, tok = lm.model, lm.tokenizer
    AttentionInterface.register("recording", recording_attention)
    model.set_attn_implementation("recording")
    ids = tok(load_essays(None).first_words(4000), return_tensors="pt").input_ids[:, :PROMPT]
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(STEPS):
            QUERIES.append([])
            out = model(nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
    heads_kv = model.config.num_key_value_heads
    n_rep = model.config.num_attention_heads // heads_kv
    d = model.config.hidden_size // model.config.num_attention_heads
    keep = exact_keep(d, SPARSITY)
    print(f"SmolLM2-135M-Instruct, {ids.shape[1]}-token essay prompt, {STEPS} decode steps, {len(QUERIES[0])} "
          f"layers, {heads_kv} KV heads x {n_rep} query heads, D {d}; keys pruned per token at s {SPARSITY} "
          f"(word rule, keep {keep}), e4m3 codes with per-token power-of-two scales")  # fmt: skip
    logit = {"fp8 keys, fp32 walk": [], "fp8 keys, fp16 walk": [], "fp16 walk vs fp32 walk": []}
    output = {"fp8 keys, fp32 walk": [], "fp8 keys, fp16 walk": [], "fp16 walk vs fp32 walk": []}
    for step, qs in enumerate(QUERIES):
        for layer, q in enumerate(qs):
            k = cache.layers[layer].keys.float()[0]  # [H_kv, T, D] (post-RoPE)
            v = cache.layers[layer].values.double()[0]
            t_comp = k.shape[1] - STEPS + step + 1 - WINDOW  # compressed tokens before this step's window
            for h in range(heads_kv):
                kh = k[h, :t_comp]
                kept = word_topk_mask(kh.abs(), keep)
                pruned = kh.masked_fill(~kept, 0).double()
                codes, scales = quantize(kh, kept)
                unscaled = codes.view(torch.float8_e4m3fn).float().masked_fill(~kept, 0)
                qh = q[0, h * n_rep : (h + 1) * n_rep, 0].double()  # [n_rep, D]
                ln = 1 / math.sqrt(d)  # natural-log logits
                exact = pruned @ qh.T * ln
                s32 = (unscaled.double() @ qh.T) * scales.double()[:, None] * ln
                s16 = half_walk(unscaled, kept, qh) * scales.double()[:, None] * ln
                vh = v[h, :t_comp].masked_fill(~word_topk_mask(v[h, :t_comp].abs(), keep), 0)
                ref = torch.softmax(exact, 0).T @ vh
                o32, o16 = (torch.softmax(s, 0).T @ vh for s in (s32, s16))

                def rel(a, b):
                    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()

                for name, a, b, oa, ob in (
                    ("fp8 keys, fp32 walk", s32, exact, o32, ref),
                    ("fp8 keys, fp16 walk", s16, exact, o16, ref),
                    ("fp16 walk vs fp32 walk", s16, s32, o16, o32),
                ):
                    logit[name].append((a - b).abs().flatten())
                    output[name].append(rel(oa, ob))
    for name in logit:
        e, o = torch.cat(logit[name]), torch.tensor(output[name])
        print(f"{name}: logit |error| median {e.median():.2e}, p99 {e.quantile(0.99):.2e}, max {e.max():.2e}; "
              f"output relative error per (step, layer, KV head; worst query head) median {o.median():.2e}, "
              f"p99 {o.quantile(0.99):.2e}, max {o.max():.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
