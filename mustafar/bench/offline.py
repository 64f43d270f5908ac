"""The scatter decoder compiled for sm_90 without a GPU (Triton's bundled ptxas): registers, shared memory and
main-loop SASS instructions per token-head, as its default launch would build it. Kernel notes quote these, and a
CPU test pins the shared-memory layout the PTX addresses."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource

from mustafar.bench.sass import main_loop_instructions
from mustafar.formats import CompressedStore
from mustafar.kernels import decode
from mustafar.kernels.decode_scatter import _sc_sparse_decode_kernel
from mustafar.pruning.keep import exact_keep

_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class OfflineKernel:
    constexprs: dict
    registers: int
    spill_bytes: int
    shared_bytes: int
    loop_instructions: int
    llir: str
    sass: str

    @property
    def instructions_per_token_head(self) -> float:
        return self.loop_instructions / decode.TOKENS_PER_TILE


def _signature(constexprs: dict, dtype: torch.dtype, static: bool) -> dict[str, str]:
    sig = {}
    for name in _sc_sparse_decode_kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("q_ptr", "kw_ptr", "vw_ptr"):
            sig[name] = "*" + _TYPES[dtype]
        elif name in ("k_bits", "k_vals", "v_bits", "v_vals", "k_scales", "v_scales", "k_order") or (
            static and name in ("k_len", "v_len")
        ):
            sig[name] = "*i32"
        elif name in ("o_ptr", "lse_ptr"):
            sig[name] = "*fp32"
        else:
            sig[name] = "fp32" if name == "qk_scale" else "i32"
    return sig


def compile_scatter(
    head_dim: int = 128,
    sparsity: float = 0.7,
    dtype: torch.dtype = torch.float16,
    n_rep: int = 4,
    static: bool = False,
    value_dtype: str = "native",
    v_nm_group: int = 0,
    k_nm_group: int = 0,
) -> OfflineKernel:
    """Compile the scatter decoder for word-quota stores of this shape with the default launch's constexprs
    (``k_nm_group`` / ``v_nm_group``: K / V kept per consecutive group of that many channels)."""
    keep = exact_keep(head_dim, sparsity)
    k_store, v_store = (
        CompressedStore(
            1,
            8,
            head_dim,
            dtype,
            "cpu",
            keep,
            capacity=64,
            static=static,
            word_quota=True,
            value_dtype=value_dtype,
            nm_group=group,
        )
        for group in (k_nm_group, v_nm_group)
    )
    q = torch.zeros(1, 8 * n_rep, 1, head_dim, dtype=dtype)
    constexprs = decode._scatter_constexprs(q, k_store, v_store, decode.TOKENS_PER_TILE)
    sig = _signature(constexprs, dtype, static)
    names = _sc_sparse_decode_kernel.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items() if t.startswith("*")}
    maxnreg = decode._scatter_plan(k_store, v_store, constexprs["SLOT_BYTES"], n_rep)[0]
    compiled = triton.compile(
        GluonASTSource(_sc_sparse_decode_kernel, sig, constexprs, attrs),
        target=GPUTarget("cuda", 90, 32),
        options=dict(num_warps=1, maxnreg=maxnreg),
    )
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        info = subprocess.run(
            [os.path.join(_BIN, "ptxas"), "-v", "-arch=sm_90a", f"-maxrregcount={maxnreg}", ptx, "-o", cubin],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        sass = subprocess.run(
            [os.path.join(_BIN, "nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True
        ).stdout
    spill = re.search(r"(\d+) bytes spill stores", info)
    return OfflineKernel(
        constexprs=constexprs,
        registers=int(re.search(r"Used (\d+) registers", info).group(1)),
        spill_bytes=int(spill.group(1)) if spill else 0,
        shared_bytes=compiled.metadata.shared,
        loop_instructions=main_loop_instructions(sass),
        llir=compiled.asm["llir"],
        sass=sass,
    )


def summary(kernel: OfflineKernel) -> dict:
    """What the notes and the layout test read: ring plan, registers, shared bytes, constant shared offsets."""
    keys = ("SIDES", "SLOT_BYTES", "SMEM_WORDS", "BLOCK_N")
    return dict(
        {k.lower(): kernel.constexprs[k] for k in keys},
        registers=kernel.registers,
        spill_bytes=kernel.spill_bytes,
        shared_bytes=kernel.shared_bytes,
        instructions_per_token_head=kernel.instructions_per_token_head,
        shared_offsets=sorted({int(x) for x in re.findall(r"@global_smem, i32 (\d+)\)", kernel.llir)}),
    )


def main() -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    ap.add_argument("--value-dtype", choices=("native", "fp8"), default="native")
    ap.add_argument(
        "--v-nm-group", type=int, choices=(0, 4, 8, 16), default=0, help="V kept per N-channel group"
    )
    ap.add_argument(
        "--k-nm-group", type=int, choices=(0, 4, 8, 16), default=0, help="K kept per N-channel group"
    )
    args = ap.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    kernel = compile_scatter(
        args.head_dim,
        args.sparsity,
        dtype,
        value_dtype=args.value_dtype,
        v_nm_group=args.v_nm_group,
        k_nm_group=args.k_nm_group,
    )
    print(json.dumps(summary(kernel)))


if __name__ == "__main__":
    main()
