"""fp16 s 0.5: graph-replayed time vs split count (and ring sides, argv[1]) at the issue-14 sizes."""
import json, sys
import torch
sys.path.insert(0, "scripts")
from mustafar.bench.inputs import decode_call, decode_inputs, default_launch
from mustafar.bench.shapes import attention_shape
from mustafar.kernels import decode
from mustafar.pruning.keep import exact_keep
from bench_kernels import graph_time
sides = int(sys.argv[1]) if len(sys.argv) > 1 else None
s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
decode.SCATTER_SIDES = sides
shape = attention_shape("llama3_8b")
for b, t in [(8, 32768), (32, 16384), (32, 32768)]:
    inp = decode_inputs(shape, b, t, exact_keep(128, s), word_quota=True)
    base = decode_call(inp, {}); base(); torch.cuda.synchronize()
    d = default_launch(inp)
    row = dict(s=s, sides=sides, b=b, t=t, default=d.get("num_splits"), us={"default": round(graph_time(base), 1)})
    for n in (2, 3, 4, 5, 6, 8, 12, 16):
        c = decode_call(inp, dict(d, num_splits=n)); c(); torch.cuda.synchronize()
        row["us"][n] = round(graph_time(c), 1)
    print(json.dumps(row), flush=True)
    del inp; torch.cuda.empty_cache()
