"""Round 32: the two launch changes behind private knobs, against the default launch, same process, alternating:
balanced split shares (decode.BALANCED_SPLITS), the scatter decoder's lazy rescale (decode.LAZY_RESCALE) and both.
Graph-replayed and eager times (L2 flushed), dense SDPA beside them, Llama-3-8B shapes. Each variant is captured
with its knobs set (a graph holds the launch arguments of its capture); LAZY_RESCALE is read when a configuration
is made, so the configurations are dropped at each switch. One JSON line per case.
Usage: python3 results/kernels/round32_h100/ab_round32.py (from the repository root)."""
import json, sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd())); sys.path.insert(0, str(Path.cwd() / "scripts"))
import torch
from mustafar.bench.inputs import WINDOW, decode_call, default_launch, dense_decode_call, time_us
from mustafar.bench.shapes import attention_shape
from mustafar.kernels import decode
from mustafar.kernels.decode import _split_plan
from bench_kernels import graph_time, rule_inputs

shape = attention_shape("llama3_8b")
ROUNDS = 3
VARIANTS = {"default": (False, False), "balanced": (True, False), "lazy": (False, True), "both": (True, True)}


def use(balanced: bool, lazy: bool) -> None:
    decode.BALANCED_SPLITS = balanced
    if decode.LAZY_RESCALE != lazy:
        decode.LAZY_RESCALE = lazy
        decode._CONFIGS.clear()
        decode._PUBLIC_CONFIGS.clear()


for b, t in ((8, 16384), (8, 32768), (16, 16384), (32, 16384), (1, 32768)):
    dense = graph_time(dense_decode_call(shape, b, t + WINDOW))
    for rule, s in (("word-fp8", 0.7), ("word", 0.7), ("nm8ck-fp8-nm4v", 0.5)):
        inp = rule_inputs(rule, s, b, t, shape)
        use(False, False)
        decode_call(inp, {})(); torch.cuda.synchronize()  # the first launch measures the occupancy the plan uses
        launch = default_launch(inp)
        plans = {bal: _split_plan(b * shape.heads_kv, t, launch["block_n"], 1, launch["num_splits"], bal)
                 for bal in (False, True)}
        graph = {v: [] for v in VARIANTS}
        eager = {v: [] for v in VARIANTS}
        for _ in range(ROUNDS):
            for name, knobs in VARIANTS.items():
                use(*knobs)
                graph[name].append(round(graph_time(decode_call(inp, launch)), 2))
                eager[name].append(round(time_us(decode_call(inp, launch)), 2))
        use(False, False)
        med = {v: sorted(x)[ROUNDS // 2] for v, x in graph.items()}
        print(json.dumps(dict(
            rule=rule, s=s, b=b, t=t, splits=launch["num_splits"], plans={str(k): v for k, v in plans.items()},
            dense=round(dense, 1), graph=graph, eager=eager,
            speedup={v: round(dense / m, 3) for v, m in med.items()},
            gain_pct={v: round(100 * (med["default"] / m - 1), 2) for v, m in med.items() if v != "default"},
        )), flush=True)
        del inp; torch.cuda.empty_cache()
