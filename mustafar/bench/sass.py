"""Instruction counts from a compiled kernel's SASS: what the kernel notes quote per token-head."""

from __future__ import annotations

import re
from collections import Counter

_LABEL = re.compile(r"^\s*\.?(L\w+):")
_BRANCH = re.compile(r"\bBRA\s+`?\(?\.?(L\w+)")
_INSTRUCTION = re.compile(r"^\s*(?:[0-9a-f-]{2}:[0-9a-f-]:[0-9a-f-]:[-Y]:[0-9a-f]\s+|/\*[0-9a-f]+\*/\s+)(\S)")


def _main_loop(sass: str, marker: str) -> list[str]:
    """The instruction lines of the largest loop body (a label through the backward branch to it) that contains
    the opcode ``marker``."""
    lines = sass.splitlines()
    labels: dict[str, int] = {}
    is_instr = [False] * len(lines)
    best: list[str] = []
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
            body = [lines[j] for j in range(labels[b.group(1)], i + 1) if is_instr[j]]
            if any(marker in x for x in body) and len(body) > len(best):
                best = body
    if not best:
        raise ValueError(f"no loop (a backward branch to a label) containing {marker} in this SASS listing")
    return best


def main_loop_instructions(sass: str, marker: str = "LDGSTS") -> int:
    """Instructions in the largest loop body that contains the opcode ``marker``: for the staged decoders the tile
    loop, which stages tiles with cp.async (LDGSTS), not the dense-window loop after it. Understands nvdisasm's
    listing with or without its scheduling prefix."""
    return len(_main_loop(sass, marker))


def main_loop_opcodes(sass: str, marker: str = "LDGSTS") -> Counter[str]:
    """The same loop's instructions per opcode (its mnemonic without modifiers or predicate: ``LDS``, ``MOVM``):
    where the kernel notes locate a change's work, shared loads against conversions against permutes."""
    return Counter(_opcode(line) for line in _main_loop(sass, marker))


def _opcode(line: str) -> str:
    """An instruction line's mnemonic: after the scheduling prefix and any predicate, up to its first modifier."""
    text = line[_INSTRUCTION.match(line).start(1) :]
    if text.startswith("@"):
        text = text.split(None, 1)[1]
    return re.split(r"[.\s;]", text, maxsplit=1)[0]
