"""Round 30: graph-replayed time of the default scatter launch at split counts around the wave model's choice
(word-fp8 and word, s 0.7, Llama-3-8B shapes), dense SDPA beside it: is #16's B 8 / 16K fp8 gap (2.47x against
2.5x) a split-plan miss? One JSON line per case. Usage: python3 splits.py (from the repository root)."""
import json, sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd())); sys.path.insert(0, str(Path.cwd() / "scripts"))
import torch
from mustafar.bench.inputs import WINDOW, decode_call, default_launch, dense_decode_call
from mustafar.bench.shapes import attention_shape
from bench_kernels import graph_time, rule_inputs

shape = attention_shape("llama3_8b")
for b, t in ((8, 16384), (8, 32768), (16, 16384)):
    dense = graph_time(dense_decode_call(shape, b, t + WINDOW))
    for rule in ("word-fp8", "word"):
        inp = rule_inputs(rule, 0.7, b, t, shape)
        decode_call(inp, {})(); torch.cuda.synchronize()  # the first launch measures the occupancy the plan uses
        launch = default_launch(inp)
        auto = launch["num_splits"]
        res = {}
        for n in sorted({auto, 12, 16, 20, 22, 26, 28, 32, 40, 48}):
            res[n] = round(graph_time(decode_call(inp, dict(launch, num_splits=n))), 1)
        best = min(res, key=res.get)
        print(json.dumps(dict(rule=rule, b=b, t=t, dense=round(dense, 1), auto=auto, x_auto=round(dense / res[auto], 3),
                              best=best, x_best=round(dense / res[best], 3), us=res)), flush=True)
        del inp; torch.cuda.empty_cache()
