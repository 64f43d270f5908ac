import os, sys
import torch
from mustafar.bench.inputs import decode_call, decode_inputs
from mustafar.bench.shapes import attention_shape
from mustafar.kernels import decode
from mustafar.pruning.keep import exact_keep
cap = int(os.environ.get("CAP", "0"))
if cap:
    orig = decode._scatter_plan
    decode._scatter_plan = lambda k, v, side, n: (cap, orig(k, v, side, n)[1])
shape = attention_shape("llama3_8b")
inp = decode_inputs(shape, 32, 32768, exact_keep(128, 0.5), word_quota=True)
call = decode_call(inp, {})
for _ in range(4):
    call()
torch.cuda.synchronize()
print("occupancy", list(decode._OCCUPANCY.values()))
