"""Round 32: balanced split shares (decode.BALANCED_SPLITS) against the rounded-up ones, same process, alternating:
graph-replayed and eager times of the default launch (L2 flushed), dense SDPA beside them, Llama-3-8B shapes.
Each variant is captured with the knob set (a graph holds the launch arguments of its capture). One JSON line per
case. Usage: python3 results/kernels/round32_h100/ab_balanced.py (from the repository root)."""
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
for b, t in ((8, 16384), (8, 32768), (16, 16384), (32, 16384), (1, 32768)):
    dense = graph_time(dense_decode_call(shape, b, t + WINDOW))
    for rule, s in (("word-fp8", 0.7), ("word", 0.7), ("nm8ck-fp8-nm4v", 0.5)):
        inp = rule_inputs(rule, s, b, t, shape)
        decode_call(inp, {})(); torch.cuda.synchronize()  # the first launch measures the occupancy the plan uses
        launch = default_launch(inp)
        plans = {bal: _split_plan(b * shape.heads_kv, t, launch["block_n"], 1, launch["num_splits"], bal)
                 for bal in (False, True)}
        graph, eager = {False: [], True: []}, {False: [], True: []}
        for _ in range(ROUNDS):
            for bal in (False, True):
                decode.BALANCED_SPLITS = bal
                graph[bal].append(round(graph_time(decode_call(inp, launch)), 2))
                eager[bal].append(round(time_us(decode_call(inp, launch)), 2))
        decode.BALANCED_SPLITS = False
        med = {bal: sorted(v)[ROUNDS // 2] for bal, v in graph.items()}
        print(json.dumps(dict(
            rule=rule, s=s, b=b, t=t, splits=launch["num_splits"], plans={str(k): v for k, v in plans.items()},
            dense=round(dense, 1), graph=graph, eager=eager, x_rounded=round(dense / med[False], 3),
            x_balanced=round(dense / med[True], 3), gain_pct=round(100 * (med[False] / med[True] - 1), 2),
        )), flush=True)
        del inp; torch.cuda.empty_cache()
