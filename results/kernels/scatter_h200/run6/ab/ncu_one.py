import sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mustafar.bench.inputs import decode_call, decode_inputs
from mustafar.bench.shapes import attention_shape
from mustafar.pruning.keep import exact_keep
shape = attention_shape("llama3_8b")
s = float(sys.argv[1]); vd = sys.argv[2] if len(sys.argv) > 2 else "native"
inp = decode_inputs(shape, 32, 32768, exact_keep(128, s), word_quota=True, value_dtype=vd)
call = decode_call(inp, {})
for _ in range(4):
    call()
torch.cuda.synchronize()
