"""Instruction counts from a compiled kernel's SASS: what the kernel notes quote per token-head."""

from __future__ import annotations

import re

_LABEL = re.compile(r"^\s*\.?(L\w+):")
_BRANCH = re.compile(r"\bBRA\s+`?\(?\.?(L\w+)")
_INSTRUCTION = re.compile(r"^\s*(?:[0-9a-f-]{2}:[0-9a-f-]:[0-9a-f-]:[-Y]:[0-9a-f]\s+|/\*[0-9a-f]+\*/\s+)(\S)")


def main_loop_instructions(sass: str, marker: str = "LDGSTS") -> int:
    """Instructions in the largest loop body (a label through the backward branch to it) that contains the
    opcode ``marker``: for the staged decoders the tile loop, which stages tiles with cp.async (LDGSTS), not the
    dense-window loop after it. Understands nvdisasm's listing with or without its scheduling prefix."""
    lines = sass.splitlines()
    labels: dict[str, int] = {}
    is_instr = [False] * len(lines)
    best = 0
    for i, line in enumerate(lines):
        m = _LABEL.match(line)
        if m:
            labels[m.group(1)] = i
            continue
        if not _INSTRUCTION.match(line):
            continue
        is_instr[i] = True
        b = _BRANCH.search(line)
        if b and b.group(1) in labels:  # a backward branch: the loop is label..here
            body = range(labels[b.group(1)], i + 1)
            if any(is_instr[j] and marker in lines[j] for j in body):
                best = max(best, sum(is_instr[j] for j in body))
    if best == 0:
        raise ValueError(f"no loop (a backward branch to a label) containing {marker} in this SASS listing")
    return best
