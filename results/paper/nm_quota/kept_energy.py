"""Why the N:M rules lose: the share of each token's squared K/V magnitude that a keep rule retains, on the
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
}
print(f"| side | s | {' | '.join(rules)} |\n|---|---|{'---|' * len(rules)}")
for side in ("keys", "values"):
    x = torch.cat([getattr(layer, side) for layer in cache.layers], dim=1).abs().float()  # [1, L·H, T, D]
    energy = x.square().sum(-1)
    for s in (0.5, 0.75):
        k = exact_keep(d, s)
        cells = [((x * m(x, k)).square().sum(-1) / energy).mean().item() for m in rules.values()]
        print(f"| {side[0].upper()} | {s} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
