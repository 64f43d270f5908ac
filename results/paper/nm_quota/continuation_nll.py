"""How much each key keep rule hurts the embedded model: the loss (mean negative log-likelihood per token) of a
teacher-forced 256-token continuation read through a cache whose 1,536-token prefix was pruned in mask mode (keys
only, values dense), on four stretches of RULER's essay haystack. A cheaper, denser signal than RULER's scores
for comparing groupings (it ranks them as RULER does: nm8 far behind, then nm8s, then word and exact).
python results/paper/nm_quota/continuation_nll.py [--set s50|s70]  (CPU, ~2 min for s50, ~6 min for s70)"""

import argparse
import sys
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import mustafar  # noqa: E402
from eval.ruler.essays import load_essays  # noqa: E402
from mustafar.models import ModelConfig, load  # noqa: E402

PREFIX, CONTINUATION = 1536, 256
# name -> (K sparsity, K keep rule); None: the dense cache
RULE_SETS = {
    "s50": {
        "dense": None,
        "exact": (0.5, "exact"),
        "word": (0.5, "word"),
        "nm8": (0.5, "nm8"),
        "nm8s": (0.5, "nm8s"),
        "nm8c": (0.5, "nm8c"),
    },
    # near s 0.7: 5 of every 16 channels (s 0.6875) keeps one entry more per 64 than word at 0.7
    "s70": {
        "dense": None,
        "exact 0.7": (0.7, "exact"),
        "word 0.7": (0.7, "word"),
        "exact 0.6875": (0.6875, "exact"),
        "word 0.6875": (0.6875, "word"),
        "nm16 0.6875": (0.6875, "nm16"),
        "nm16c 0.6875": (0.6875, "nm16c"),
        "word 0.75": (0.75, "word"),
        "nm16c 0.75": (0.75, "nm16c"),
        "nm8c 0.75": (0.75, "nm8c"),
    },
}


def continuation_nll(model, ids: torch.Tensor, rule: tuple[float, str] | None) -> float:
    """Mean NLL of ids[PREFIX + 1:] given everything before, the prefix cached under `rule` (None: dense)."""
    with torch.no_grad():
        if rule is None:
            cache = DynamicCache(config=model.config)
            model(ids[:, :PREFIX], past_key_values=cache)
            logits = model(ids[:, PREFIX:], past_key_values=cache).logits
        else:
            sparsity, keep_rule = rule
            with mustafar.prune(model, k_sparsity=sparsity, v_sparsity=0.0, k_keep_rule=keep_rule) as cache:
                model(ids[:, :PREFIX], past_key_values=cache)
                logits = model(ids[:, PREFIX:], past_key_values=cache).logits
    logp = logits[0, :-1].float().log_softmax(-1)
    return -logp.gather(-1, ids[0, PREFIX + 1 :, None]).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(RULE_SETS), default="s50", help="the key rules to compare")
    rules = RULE_SETS[ap.parse_args().set]
    loaded = load(ModelConfig(), device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    words = load_essays(None).words
    stretches = []
    for start in range(0, 12000, 3000):
        text = " ".join(words[start : start + 2000])
        stretches.append(tok(text, return_tensors="pt").input_ids[:, : PREFIX + CONTINUATION])
    loss = {name: [continuation_nll(model, ids, rule) for ids in stretches] for name, rule in rules.items()}
    dense = loss["dense"]
    print(f"| K rule | {' | '.join(f'stretch {i + 1}' for i in range(len(stretches)))} | mean | − dense |")
    print(f"|---|{'---|' * len(stretches)}---|---|")
    for name, values in loss.items():
        mean = sum(values) / len(values)
        extra = mean - sum(dense) / len(dense)
        cells = " | ".join(f"{v:.4f}" for v in values)
        print(f"| {name} | {cells} | {mean:.4f} | {'' if name == 'dense' else f'{extra:+.4f}'} |")


if __name__ == "__main__":
    main()
