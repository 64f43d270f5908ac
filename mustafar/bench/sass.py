"""Instruction counts from a compiled kernel's SASS: what the kernel notes quote per token-head."""

from __future__ import annotations

import re

_LABEL = re.compile(r"^\s*\.?(L\w+):")
_BRANCH = re.compile(r"\bBRA\s+`?\(?\.?(L\w+)")
_INSTRUCTION = re.compile(r"^\s*(?:[0-9a-f-]{2}:[0-9a-f-]:[0-9a-f-]:[-Y]:[0-9a-f]\s+|/\*[0-9a-f]+\*/\s+)(\S)")


def main_loop_instructions(sass: str) -> int:
    """Instructions in the largest loop body (a label through the backward branch to it), the body a decode
    kernel runs once per tile. Understands nvdisasm's listing with or without its scheduling prefix."""
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
            best = max(best, sum(is_instr[labels[b.group(1)] : i + 1]))
    if best == 0:
        raise ValueError("no loop (a backward branch to a label) in this SASS listing")
    return best
