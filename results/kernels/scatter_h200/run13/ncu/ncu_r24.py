"""Round 24 Nsight Compute target: python3 ncu_r24.py FMT -- four default launches of the scatter decoder at
B 32 / 32K, Llama-3-8B attention, for FMT nm8ck (fp8 K 4:8 calibrated + V 2:4, s 0.5), nm16ck (fp8 K 5:16
calibrated + V 5:16, s 0.6875) or word (fp16 word quota, s 0.7). Run from the repository root."""

import sys

import torch

from mustafar.bench.inputs import decode_call, decode_inputs
from mustafar.bench.shapes import attention_shape

FORMATS = {
    "nm8ck": (64, dict(value_dtype="fp8", k_nm_group=8, v_nm_group=4, k_calibrated=True)),
    "nm16ck": (40, dict(value_dtype="fp8", k_nm_group=16, v_nm_group=16, k_calibrated=True)),
    "word": (38, {}),
}
keep, extra = FORMATS[sys.argv[1]]
inp = decode_inputs(attention_shape("llama3_8b"), 32, 32768, keep, word_quota=True, **extra)
call = decode_call(inp, {})
for _ in range(4):
    call()
torch.cuda.synchronize()
