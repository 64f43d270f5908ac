"""The official LongBench prompt path (pred.py @ 2e00731): format, middle-truncate, chat-wrap, tokenize.

Templates (`prompts.json`, typos kept) and generation lengths (`maxlen.json`) are benchmark data shipped as
package files so a hash test can pin them.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

# Few-shot and code prompts are continued raw: wrapping them in a chat turn breaks the in-context pattern.
SKIP_CHAT_TASKS: frozenset[str] = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
# samsum also stops at the first newline and must generate at least one token (pred.py special case).
NEWLINE_STOP_TASKS: frozenset[str] = frozenset({"samsum"})


def _load_json(name: str) -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))


PROMPTS: dict[str, str] = _load_json("prompts.json")
MAXLEN: dict[str, int] = _load_json("maxlen.json")


def format_prompt(task: str, record: dict[str, Any]) -> str:
    """`template.format(**record)`; the templates only reference `context` and `input`."""
    return PROMPTS[task].format(context=record["context"], input=record["input"])


def truncate_middle(prompt: str, tokenizer: Any, max_length: int) -> str:
    """Keep int(max_length/2) head and tail tokens when over budget, counted with default special tokens.

    The halves are decoded separately (special tokens skipped) and joined without a separator, as in pred.py;
    the re-tokenised length may therefore drift by a few tokens.
    """
    ids = tokenizer(prompt)["input_ids"]
    if len(ids) <= max_length:
        return prompt
    half = int(max_length / 2)
    head = tokenizer.decode(ids[:half], skip_special_tokens=True)
    tail = tokenizer.decode(ids[-half:], skip_special_tokens=True)
    return head + tail


def uses_chat_template(task: str, tokenizer: Any, chat_template: bool = True) -> bool:
    return chat_template and task not in SKIP_CHAT_TASKS and bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(task: str, prompt: str, tokenizer: Any, chat_template: bool = True) -> list[int]:
    """Token ids given to the model: the whole prompt as one user turn, or the raw prompt for skip-chat tasks."""
    if not uses_chat_template(task, tokenizer, chat_template):
        return list(tokenizer(prompt)["input_ids"])
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    bos = getattr(tokenizer, "bos_token", None)
    # A template that renders BOS itself must not get a second one from the tokenizer.
    add_special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def newline_token_id(tokenizer: Any) -> int:
    """The id pred.py stops samsum on: the last id of encode("\\n") without special tokens."""
    return tokenizer.encode("\n", add_special_tokens=False)[-1]
