"""Nsight Compute target: the default-launch decode of keep rule argv[1] at sparsity argv[2], B 8 / 16K,
Llama-3-8B shapes (five calls; gpu3.sh profiles the third decoder launch)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd())); sys.path.insert(0, str(Path.cwd() / "scripts"))
from bench_kernels import rule_inputs  # noqa: E402
from mustafar.bench.inputs import decode_call  # noqa: E402
from mustafar.bench.shapes import attention_shape  # noqa: E402

inp = rule_inputs(sys.argv[1], float(sys.argv[2]), 8, 16384, attention_shape("llama3_8b"))
call = decode_call(inp, {})
for _ in range(5):
    call()
torch.cuda.synchronize()
