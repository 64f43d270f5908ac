"""Nsight target: one default-launch decode at B 32 / 32K (argv: sparsity, value dtype, V group, K group, strided)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mustafar.bench.inputs import decode_call, decode_inputs  # noqa: E402
from mustafar.bench.shapes import attention_shape  # noqa: E402
from mustafar.pruning.keep import exact_keep  # noqa: E402

s, vd, vnm, knm, strided = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
inp = decode_inputs(attention_shape("llama3_8b"), 32, 32768, exact_keep(128, s), word_quota=True, value_dtype=vd,
                    v_nm_group=vnm, k_nm_group=knm, k_strided=strided)
call = decode_call(inp, {})
for _ in range(4):
    call()
torch.cuda.synchronize()
