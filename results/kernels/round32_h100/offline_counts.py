"""Round 32: the scatter decoder's main loop per 32-token tile from sm_90 SASS (Triton's bundled ptxas, no GPU),
default launch against the lazy rescale (decode.LAZY_RESCALE): registers, spills, the loop's instructions, and for
the lazy kernel the instructions each forward branch skips (a tile that rescales nothing skips them all).

    PYTHONPATH=. python results/kernels/round32_h100/offline_counts.py > results/kernels/round32_h100/offline_counts.txt
"""

import re

from mustafar.bench import sass
from mustafar.bench.offline import compile_scatter
from mustafar.kernels import decode

FORMATS = {
    "word s0.7": dict(),
    "word fp8 s0.7": dict(value_dtype="fp8"),
    "fp8 K 4:8c + V 2:4": dict(sparsity=0.5, value_dtype="fp8", k_nm_group=8, v_nm_group=4),
    "fp8 5:16": dict(sparsity=0.6875, value_dtype="fp8", k_nm_group=16, v_nm_group=16),
}


def _address(line: str) -> int | None:
    m = re.search(r"/\*([0-9a-f]{4})\*/", line)
    return int(m.group(1), 16) if m else None


def skipped(listing: str) -> list[int]:
    """Instructions of the main loop between each of its forward branches and the branch's target."""
    lines = listing.splitlines()
    labels = {}
    for i, line in enumerate(lines):
        m = re.match(r"^\s*\.?(L\w+):", line)
        if m:
            labels[m.group(1)] = next((a for a in map(_address, lines[i + 1 :]) if a is not None), 1 << 30)
    body = sass._main_loop(listing, "LDGSTS")
    at = [_address(line) for line in body]
    counts = []
    for i, line in enumerate(body[:-1]):
        m = re.search(r"BRA\s+(?:P\d,\s*)?`?\(?\.?(L\w+)", line)
        if m and labels.get(m.group(1), 0) > at[i]:
            counts.append(sum(at[i] < a < labels[m.group(1)] for a in at))
    return counts


for name, kw in FORMATS.items():
    for lazy in (False, True):
        decode.LAZY_RESCALE = lazy
        k = compile_scatter(**kw)
        skips = skipped(k.sass) if lazy else []
        line = f"{name:20s} {'lazy' if lazy else 'default':8s} registers {k.registers} spill {k.spill_bytes} B, loop {k.loop_instructions}"
        if lazy:
            line += f"; skipped by its branches {skips}: skip path {k.loop_instructions - sum(skips)}"
        print(line)
