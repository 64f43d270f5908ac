"""Round 33: the split plan with the short last shares placed in the tail (decode._split_cost) against the plain
round-3 wave model (decode.TAIL_SPLITS off), graph-replayed (L2 flushed), alternating in one process, dense SDPA beside them; Llama-3-8B
shapes. `old`: the private launch at the old model's plan (decode._wave_model_plan without the tail: equal shares);
`new`: the private launch at the tail model's plan (split count and share); `equal`: the private launch at the new
split count with equal shares.
Only sizes where the two plans differ are timed; one JSON line per case.
Usage: python3 results/kernels/round33_h100/ab_tail.py (from the repository root)."""
import json, sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd())); sys.path.insert(0, str(Path.cwd() / "scripts"))
import torch
from mustafar.bench.inputs import WINDOW, decode_call, default_launch, dense_decode_call
from mustafar.bench.shapes import attention_shape
from mustafar.kernels import decode
from mustafar.kernels.dispatch import decoder_for
from bench_kernels import graph_time, rule_inputs

shape = attention_shape("llama3_8b")
ROUNDS = 3


CASES = [(8, 16384), (8, 32768), (16, 16384), (16, 32768), (32, 16384), (32, 32768), (16, 8192), (32, 8192),
         (8, 65536), (64, 8192)]
for rule, s in (("word-fp8", 0.7), ("word", 0.7), ("nm8ck-fp8-nm4v", 0.5), ("exact", 0.7)):
    for b, t in CASES:
        inp = rule_inputs(rule, s, b, t, shape)
        decode_call(inp, {})(); torch.cuda.synchronize()  # the first launch measures the occupancy the plans use
        launch = default_launch(inp)
        cfg = decode._configure(inp.q, inp.k_store, inp.v_store, decoder_for(inp.q, inp.k_store, inp.v_store), None, None)
        slots = decode._sm_count(inp.q.device.index) * decode._OCCUPANCY.get(cfg.occupancy_key, 2)
        rows, tiles = b * shape.heads_kv, -(-t // launch["block_n"])
        old = decode._wave_model_plan(rows, tiles, slots, False)
        new = decode._wave_model_plan(rows, tiles, slots, True)
        assert (launch["num_splits"], launch["split_tokens"] // launch["block_n"]) == (new if decode.TAIL_SPLITS else old)
        if old == new:
            print(json.dumps(dict(rule=rule, b=b, t=t, slots=slots, same=new)), flush=True)
            del inp; torch.cuda.empty_cache(); continue
        bn = launch["block_n"]
        calls = {"old": decode_call(inp, dict(launch, num_splits=old[0], split_tokens=None)),
                 "new": decode_call(inp, dict(launch, num_splits=new[0], split_tokens=new[1] * bn)),
                 "equal": decode_call(inp, dict(launch, num_splits=new[0], split_tokens=None))}
        ref = calls["old"]().float().clone()
        err = {k: float((c().float() - ref).abs().max()) for k, c in calls.items()}
        times = {k: [] for k in calls}
        for _ in range(ROUNDS):
            for k, c in calls.items():
                times[k].append(round(graph_time(c), 2))
        med = {k: sorted(v)[ROUNDS // 2] for k, v in times.items()}
        dense = graph_time(dense_decode_call(shape, b, t + WINDOW))
        print(json.dumps(dict(
            rule=rule, s=s, b=b, t=t, slots=slots, old=list(old), new=list(new), times=times,
            max_abs_diff=err, dense=round(dense, 1), speedup={k: round(dense / m, 3) for k, m in med.items()},
            gain_pct={k: round(100 * (med["old"] / m - 1), 2) for k, m in med.items() if k != "old"},
        )), flush=True)
        del inp, calls; torch.cuda.empty_cache()
