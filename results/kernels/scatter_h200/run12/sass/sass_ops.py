"""Offline sm_90 (no GPU): the scatter decoder's main loop per opcode for the expanded formats NOTES round 23
compares (default launch constexprs, Llama-3-8B's GQA 4, D 128, fp16 queries). Run from a checkout's root:
PYTHONPATH=$PWD python results/kernels/scatter_h200/run12/sass/sass_ops.py  (main -> sass_ops_main.txt; the same
script in a checkout of branch run14/v-operand -> sass_ops_branch.txt)."""

from mustafar.bench.offline import compile_scatter
from mustafar.bench.sass import main_loop_opcodes

SHOWN = ("LDS", "STS", "LDSM", "MOVM", "LDGSTS", "HMMA", "PRMT", "F2FP", "SHF", "IMAD", "LOP3", "POPC", "SHFL")
CASES = {
    "fp8 K 4:8 + V 2:4 (s 0.5)": dict(sparsity=0.5, value_dtype="fp8", k_nm_group=8, v_nm_group=4),
    "fp16 K 4:8 + V 2:4 (s 0.5)": dict(sparsity=0.5, k_nm_group=8, v_nm_group=4),
    "fp8 K 5:16 + V 5:16 (s 0.6875)": dict(sparsity=0.6875, value_dtype="fp8", k_nm_group=16, v_nm_group=16),
    "fp8 K word + V 5:16 (s 0.6875)": dict(sparsity=0.6875, value_dtype="fp8", v_nm_group=16),
}

print(f"| format | loop instructions | per token-head | {' | '.join(SHOWN)} |")
print("|---|---|---|" + "---|" * len(SHOWN))
for name, kw in CASES.items():
    k = compile_scatter(**kw)
    ops = main_loop_opcodes(k.sass)
    cells = " | ".join(str(ops.get(op, 0)) for op in SHOWN)
    print(f"| {name} | {k.loop_instructions} | {k.instructions_per_token_head:.2f} | {cells} |", flush=True)
