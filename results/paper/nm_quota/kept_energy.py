"""Why the N:M rules lose: the share of each token's squared K/V magnitude that a keep rule retains (mean, 1st
percentile, and the first token, which draws most attention) on the
embedded SmolLM2-135M-Instruct's real cache (the first 1,024 tokens of RULER's essay haystack, every layer and KV head).
python results/paper/nm_quota/kept_energy.py  (CPU, ~1 min)"""

import sys
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from eval.ruler.essays import load_essays  # noqa: E402
from mustafar.models import ModelConfig, load  # noqa: E402
from mustafar.pruning import exact_keep, nm_topk_mask, topk_mask, word_topk_mask  # noqa: E402

loaded = load(ModelConfig(), device="cpu")
model, tok = loaded.model, loaded.tokenizer
prompt = " ".join(load_essays(None).words[:1500])  # RULER's haystack text
ids = tok(prompt, return_tensors="pt").input_ids[:, :1024]
cache = DynamicCache(config=model.config)
with torch.no_grad():
    model(ids, past_key_values=cache)
d = model.config.head_dim
rules = {
    "exact": lambda x, k: topk_mask(x, k),
    "word (32)": lambda x, k: word_topk_mask(x, k),
    "nm8": lambda x, k: nm_topk_mask(x, k, 8),
    "nm4": lambda x, k: nm_topk_mask(x, k, 4),
    "nm8s": lambda x, k: nm_topk_mask(x, k, 8, strided=True),
    "nm4s": lambda x, k: nm_topk_mask(x, k, 4, strided=True),
}
print(f"| side | s | tokens | {' | '.join(rules)} |\n|---|---|---|{'---|' * len(rules)}")
for side in ("keys", "values"):
    x = torch.cat([getattr(layer, side) for layer in cache.layers], dim=1).abs().float()  # [1, L·H, T, D]
    energy = x.square().sum(-1)
    for s in (0.5, 0.75):
        k = exact_keep(d, s)
        kept = [(x * m(x, k)).square().sum(-1) / energy for m in rules.values()]  # [1, L·H, T] per rule
        for label, stat in (
            ("mean", lambda r: r.mean()),
            ("1st percentile", lambda r: r.flatten().quantile(0.01)),
            ("token 0 (the sink), mean", lambda r: r[..., 0].mean()),
        ):
            cells = " | ".join(f"{stat(r).item():.3f}" for r in kept)
            print(f"| {side[0].upper()} | {s} | {label} | {cells} |")
