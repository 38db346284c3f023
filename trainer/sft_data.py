"""SFT records: Alpaca and chat files -> conversations -> token ids with a response-only loss mask.

Formats (one record per line in ``.jsonl``; a ``.json`` file holds one array of records):

* Alpaca: ``{"instruction": str, "input": str (optional), "output": str}``; the input, when
  present, follows the instruction after a blank line.
* Chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``;
  multi-turn, the loss covers every assistant turn.

A malformed record raises :class:`SFTDataError` naming the file and line, because a silently
skipped record changes what a model was fine-tuned on.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from trainer.chat import ROLES, Message, render

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class SFTDataError(ValueError):
    """A record that is neither Alpaca nor chat; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class Conversation:
    """One SFT record, normalised; ``source`` is ``file:line`` for messages about it."""

    messages: tuple[Message, ...]
    source: str = ""


@dataclass(frozen=True)
class Example:
    """A tokenised conversation: ``train[i]`` says whether token ``i`` is part of an answer."""

    ids: tuple[int, ...]
    train: tuple[bool, ...]


def parse_record(obj: Any, where: str) -> Conversation:
    """An Alpaca or chat record as a conversation; :class:`SFTDataError` otherwise."""
    if not isinstance(obj, dict):
        raise SFTDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        raw = obj["messages"]
        if not isinstance(raw, list) or not raw:
            raise SFTDataError(f"{where}: 'messages' must be a non-empty list")
        msgs = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise SFTDataError(
                    f"{where}: messages[{i}] needs 'role' in {list(ROLES)} and a string 'content'"
                )
            msgs.append(Message(m["role"], m["content"]))
        if not any(m.role == "assistant" for m in msgs):
            raise SFTDataError(f"{where}: no assistant message, so nothing to learn")
        return Conversation(tuple(msgs), where)
    if "instruction" in obj or "output" in obj:
        instruction, extra, output = obj.get("instruction"), obj.get("input", ""), obj.get("output")
        if (
            not isinstance(instruction, str)
            or not isinstance(output, str)
            or not isinstance(extra, str | None)
        ):
            raise SFTDataError(
                f"{where}: Alpaca records need string 'instruction' and 'output' (and optional 'input')"
            )
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        return Conversation((Message("user", prompt), Message("assistant", output)), where)
    raise SFTDataError(f"{where}: neither an Alpaca record (instruction/output) nor a chat record (messages)")


def _json_array(path: Path, text: str) -> Iterator[tuple[Any, int]]:
    """Elements of a top-level JSON array with the line each starts on."""
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if not text[pos:].startswith("["):
        raise SFTDataError(
            f"{path}:1: a .json SFT file must hold an array of records (use .jsonl for one per line)"
        )
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise SFTDataError(f"{path}:{text.count(chr(10)) + 1}: unterminated JSON array")
        if text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise SFTDataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        yield obj, line


def load_records(path: str | Path) -> list[Conversation]:
    """Every record of one ``.json`` / ``.jsonl`` file, in file order."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SFTDataError(f"{p}: SFT data file not found")
    text = p.read_text(encoding="utf-8")
    out: list[Conversation] = []
    if p.suffix == ".json":
        for obj, line in _json_array(p, text):
            out.append(parse_record(obj, f"{p}:{line}"))
    else:
        for lineno, line_text in enumerate(text.splitlines(), 1):
            if not line_text.strip():
                continue
            try:
                obj = json.loads(line_text)
            except json.JSONDecodeError as exc:
                raise SFTDataError(f"{p}:{lineno}: invalid JSON ({exc.msg})") from exc
            out.append(parse_record(obj, f"{p}:{lineno}"))
    if not out:
        raise SFTDataError(f"{p}: no records")
    return out


def encode(
    tok: Tokenizer, messages: Sequence[Message], eos: str, *, generation_prompt: bool = False
) -> Example:
    """Token ids of the rendered conversation and which of them are answer tokens."""
    ids: list[int] = []
    train: list[bool] = []
    for seg in render(messages, eos, generation_prompt=generation_prompt):
        piece = tok.encode(seg.text, add_special_tokens=False).ids
        ids.extend(piece)
        train.extend([seg.train] * len(piece))
    return Example(tuple(ids), tuple(train))


def encode_all(tok: Tokenizer, records: Sequence[Conversation], eos: str, max_length: int) -> list[Example]:
    """Tokenise and truncate to ``max_length`` input tokens; records left with no answer token are dropped."""
    out, dropped = [], 0
    for rec in records:
        ex = encode(tok, rec.messages, eos)
        # max_length inputs need max_length + 1 ids (labels are shifted by one).
        ids, train = ex.ids[: max_length + 1], ex.train[: max_length + 1]
        if not any(train[1:]):
            dropped += 1
            continue
        out.append(Example(ids, train))
    if dropped:
        log.warning(
            "dropped %d of %d SFT records whose answer starts beyond %d tokens",
            dropped,
            len(records),
            max_length,
        )
    return out


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-padded next-token batch; the loss mask is 1 exactly on answer tokens as targets.

    Right padding is safe without an attention mask: attention is causal, so pads only follow.
    """
    width = max(len(e.ids) for e in examples) - 1
    n = len(examples)
    tokens = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.float32)
    for i, e in enumerate(examples):
        ids = torch.tensor(e.ids, dtype=torch.long)
        k = len(e.ids) - 1
        tokens[i, :k] = ids[:-1]
        labels[i, :k] = ids[1:]
        mask[i, :k] = torch.tensor(e.train[1:], dtype=torch.float32)
    positions = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(n, width).contiguous()
    return {"tokens": tokens, "labels": labels, "loss_mask": mask, "position_ids": positions}


def batches(examples: Sequence[Example], batch_size: int, pad_id: int, *, seed: int | None) -> list[Batch]:
    """One epoch of batches, shuffled by ``seed`` (None keeps the order, for evaluation)."""
    order = list(range(len(examples)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return [
        collate([examples[i] for i in order[b : b + batch_size]], pad_id)
        for b in range(0, len(order), batch_size)
    ]
