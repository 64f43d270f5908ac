"""Round 32: the scatter decoder's lazy rescale (decode.LAZY_RESCALE), emulated on the embedded model's real caches
(CPU, no GPU needed): how often it still rescales, and what it does to the output.

The kernel's rule (decode_scatter._lazy_moved and the fp8 frame branch): a program's running max moves (and the
accumulator is rescaled) only on tiles where some head's largest score rises more than 2^8 above it (log2
domain); with fp8 values the frame (the scale P is weighed against) moves only where the tile's largest per-token
V scale is above it or more than 2^8 below it, and P times scale / frame is weighed 2^7 up (fp16's headroom: P stays
≤ 2^8, so the product ≤ 2^15) so that a lagging frame does not push it into fp16's subnormals. The exact rule it
replaces moves the max on every rise and the frame on every tile. Both are emulated as the kernel computes them: scores in fp32, P (fp8: P times scale / frame) rounded
to fp16 for the P·V MMA, fp8 V codes (the store's per-token power-of-two scales), accumulator and sums in fp32;
each program's output (acc · frame / l) is compared with fp64 attention over the same tokens and dequantised values.

Capture as round 25's skip-rate probe (results/kernels/scatter_h200/run14/lazy/): a ~4K-token essay prefilled, 8
greedy decode steps whose queries are scored against every layer's cache, in programs of 22 and 86 tiles of 32
tokens (the split lengths of B 8 and B 32 at 16K on the H100).

    PYTHONPATH=. python results/kernels/round32_h100/lazy_numerics.py > results/kernels/round32_h100/lazy_numerics.txt
"""

import math

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from eval.ruler.essays import load_essays
from mustafar.formats.fp8 import dequantize, quantize
from mustafar.models import ModelConfig, load

TILE, WINDOW, LAG, FRAME_LAG, GAIN, STEPS, PROMPT = 32, 32, 8.0, 256.0, 128.0, 8, 4096
QUERIES: list[list[torch.Tensor]] = []


def recording_attention(module, query, key, value, attention_mask, **kwargs):
    if query.shape[2] == 1:  # decode steps only
        QUERIES[-1].append(query.detach().float())
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def program(s: torch.Tensor, codes: torch.Tensor, vs: torch.Tensor, lazy: bool) -> tuple[torch.Tensor, int, int]:
    """One program's output [heads, D] under the exact or the lazy rule, and its count of tiles (after the first)
    whose max moved and whose frame moved."""
    heads = s.shape[0]
    m = torch.full((heads,), -math.inf)
    l_sum = torch.zeros(heads)
    acc = torch.zeros(heads, codes.shape[-1])
    frame = torch.tensor(1.0)
    gain = GAIN if lazy else 1.0
    moved = shifted = 0
    for i, t0 in enumerate(range(0, s.shape[1], TILE)):
        sc, v, sca = s[:, t0 : t0 + TILE], codes[t0 : t0 + TILE], vs[t0 : t0 + TILE]
        m_tile = sc.amax(-1)
        top = sca.max()
        move = bool((m_tile - m > LAG).any()) if lazy else bool((m_tile > m).any())
        shift = bool(top > frame or top * FRAME_LAG < frame) if lazy else bool(top != frame)
        if i:
            moved += move
            shifted += shift
        alpha = torch.ones(heads)
        if move:
            m_new = torch.maximum(m, m_tile)
            alpha = torch.exp2(m - m_new)
            l_sum, m = l_sum * alpha, m_new
        if not shift:
            top = frame
        acc = acc * (alpha * frame / top).unsqueeze(-1)
        frame = top
        p = torch.exp2(sc - m.unsqueeze(-1))
        l_sum = l_sum + p.sum(-1)
        pw = (p * (sca * (gain / top))).half().float()
        acc = acc + pw @ v
    return acc * (frame / gain) / l_sum.unsqueeze(-1), moved, shifted


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
    qk = math.log2(math.e) / math.sqrt(d)
    print(f"SmolLM2-135M-Instruct, {ids.shape[1]}-token essay prompt, {STEPS} decode steps, {len(QUERIES[0])} "
          f"layers, {heads_kv} KV heads x {n_rep} query heads; tiles of {TILE}, lag 2^{LAG:g}, frame lag {FRAME_LAG:g}")  # fmt: skip
    for tiles_per_program in (22, 86):
        stats = {rule: dict(tiles=0, moved=0, shifted=0, err=[]) for rule in ("exact", "lazy")}
        for step, qs in enumerate(QUERIES):
            for layer, q in enumerate(qs):
                k = cache.layers[layer].keys.float()[0]  # [H_kv, T, D] (post-RoPE)
                v = cache.layers[layer].values.float()[0]
                t_comp = k.shape[1] - STEPS + step + 1 - WINDOW  # compressed tokens before this step's window
                for h in range(heads_kv):
                    s = (q[0, h * n_rep : (h + 1) * n_rep, 0] @ k[h, :t_comp].T) * qk  # [n_rep, T], log2 domain
                    codes, vs = quantize(v[h, :t_comp])
                    vq = dequantize(codes, torch.ones_like(vs), torch.float32)  # e4m3 codes as values
                    span = tiles_per_program * TILE
                    for start in range(0, t_comp, span):
                        sl = slice(start, min(start + span, t_comp))
                        ref = torch.softmax(s[:, sl].double() * math.log(2), -1) @ (vq[sl] * vs[sl, None]).double()
                        for rule, st in stats.items():
                            o, mv, sh = program(s[:, sl], vq[sl], vs[sl], rule == "lazy")
                            st["tiles"] += -(-(sl.stop - sl.start) // TILE) - 1
                            st["moved"] += mv
                            st["shifted"] += sh
                            st["err"].append(((o.double() - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item())
        for rule, st in stats.items():
            n, err = st["tiles"], torch.tensor(st["err"])
            print(f"programs of {tiles_per_program} tiles, {rule} rule: {n} tiles after each program's first; max "
                  f"moved on {st['moved'] / n:.2%}, frame on {st['shifted'] / n:.2%}; relative error per program "
                  f"(worst head) median {err.median():.2e}, p99 {err.quantile(0.99):.2e}, max {err.max():.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
