"""How often would a lazy softmax rescale skip the accumulator's rescale on real keys and values? (CPU, the
embedded SmolLM2-135M-Instruct, no GPU needed.)

The scatter decoder's lazy rescale (branch ``run15/lazy-rescale``) rescales a program's accumulator only on tiles
where some head's largest score rises more than 2^8 above the reference max (log2 domain), or, with fp8 values,
where the tile's largest per-token V scale differs from the last tile's. The kernel benchmark's random data keep
both still, so its A/B is a best case; this measures the rates on the model's own caches: a ~4K-token essay
prefilled, then 8 greedy decode steps whose queries (captured from the attention call) are scored against every
layer's cache in 32-token tiles, in programs of 21 and 84 tiles (the split lengths of B 8 and B 32 at 16K on the
H200). The first tile of each program always rescales (from an empty state) and is counted apart.

    PYTHONPATH=. python results/kernels/scatter_h200/run14/lazy/skip_rate.py > results/kernels/scatter_h200/run14/lazy/skip_rate.txt
"""

import math

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from eval.ruler.essays import load_essays
from mustafar.formats.fp8 import pow2_scale
from mustafar.models import ModelConfig, load

TILE, WINDOW, SLACK, STEPS, PROMPT = 32, 32, 8.0, 8, 4096
QUERIES: list[list[torch.Tensor]] = []


def recording_attention(module, query, key, value, attention_mask, **kwargs):
    if query.shape[2] == 1:  # decode steps only
        QUERIES[-1].append(query.detach().float())
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


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
    layers = len(QUERIES[0])
    heads_kv = model.config.num_key_value_heads
    n_rep = model.config.num_attention_heads // heads_kv
    scale = model.config.hidden_size // model.config.num_attention_heads
    qk = math.log2(math.e) / math.sqrt(scale)
    print(f"SmolLM2-135M-Instruct, {ids.shape[1]}-token essay prompt, {STEPS} decode steps, {layers} layers, "
          f"{heads_kv} KV heads x {n_rep} query heads; tiles of {TILE}, slack {SLACK} (log2)")  # fmt: skip
    for tiles_per_program in (21, 84):
        counts = dict(tiles=0, first=0, max_moved=0, frame_moved=0, either=0)
        for step, qs in enumerate(QUERIES):
            for layer, q in enumerate(qs):
                k = cache.layers[layer].keys.float()[0]  # [H_kv, T, D] (post-RoPE)
                v = cache.layers[layer].values.float()[0]
                t_comp = k.shape[1] - STEPS + step + 1 - WINDOW  # compressed tokens before this step's window
                for h in range(heads_kv):
                    s = (q[0, h * n_rep : (h + 1) * n_rep, 0] @ k[h, :t_comp].T) * qk  # [n_rep, T]
                    vs = pow2_scale(v[h, :t_comp].abs().amax(-1))  # the fp8 store's per-token scale
                    span = tiles_per_program * TILE
                    for start in range(0, t_comp, span):
                        ref, frame = torch.full((n_rep,), -math.inf), None
                        for t0 in range(start, min(start + span, t_comp), TILE):
                            m_tile = s[:, t0 : t0 + TILE].amax(-1)
                            top = vs[t0 : t0 + TILE].max().item()
                            if frame is None:
                                counts["first"] += 1
                            else:
                                counts["tiles"] += 1
                                mm = bool((m_tile > ref + SLACK).any())
                                fm = top != frame
                                counts["max_moved"] += mm
                                counts["frame_moved"] += fm
                                counts["either"] += mm or fm
                            if frame is None or bool((m_tile > ref + SLACK).any()):
                                ref = torch.maximum(ref, m_tile)
                            frame = top
        n = counts["tiles"]
        print(f"programs of {tiles_per_program} tiles: {n} tiles after each program's first ({counts['first']} "
              f"firsts); reference max moved on {counts['max_moved'] / n:.2%}, fp8 frame changed on "
              f"{counts['frame_moved'] / n:.2%}, either on {counts['either'] / n:.2%}")  # fmt: skip


if __name__ == "__main__":
    main()
