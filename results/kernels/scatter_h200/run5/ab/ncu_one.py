import sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mustafar.bench.inputs import decode_call, decode_inputs
from mustafar.bench.shapes import attention_shape
from mustafar.pruning.keep import exact_keep
shape = attention_shape("llama3_8b")
s = float(sys.argv[1]); vd = sys.argv[2] if len(sys.argv) > 2 else "native"
extra = {"v_nm_group": 4} if vd.endswith("nm4v") else {}  # round 15: V kept two of every four channels
inp = decode_inputs(shape, 32, 32768, exact_keep(128, s), word_quota=True,
                    value_dtype=vd.removesuffix("nm4v") or "native", **extra)
call = decode_call(inp, {})
for _ in range(4):
    call()
torch.cuda.synchronize()
