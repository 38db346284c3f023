"""SFT records: Alpaca, chat, ShareGPT, LIMA and question/answer files -> conversations -> token ids
with a response-only loss mask.

Formats (one record per line in ``.jsonl``; a ``.json`` file holds one array of records, or
records one per line as ``datasets``' ``to_json`` writes them):

* Alpaca: ``{"instruction": str, "input": str (optional), "output": str}``; the input, when
  present, follows the instruction after a blank line. Optional ``"system": str`` and
  ``"history": [[instruction, output], ...]`` (earlier turns, oldest first, as in LIMA or
  LLaMA-Factory's Alpaca files) make it a multi-turn conversation.
* Chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``; the
  content is a string or a list of typed parts (``[{"type": "text", "text": str}, ...]``, text
  parts joined by newlines). Multi-turn; the loss covers every assistant turn.
* ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}`` (also
  ``user``/``assistant`` and an optional top-level ``"system"``); LIMA's original
  ``{"conversations": [str, str, ...]}`` alternates user and assistant, starting with the user.
* Question/answer: ``{"question": str, "answer": str}`` (GSM8K and the like).

A malformed record raises :class:`SFTDataError` naming the file and line (and, in a JSON array,
the record's index), because a silently skipped record changes what a model was fine-tuned on.
A well-formed record a text model cannot learn from (images, tool calls) is dropped and counted
by reason; the counts go into the evaluation record.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from trainer.chat import ROLES, Message, render

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]

# ShareGPT speaker names -> chat roles.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}
# Turns of tool-using agents: well-formed, but not something the chat template can render.
TOOL_ROLES = ("tool", "function", "function_call", "observation", "ipython")


class SFTDataError(ValueError):
    """A record that is none of the formats; the message starts with ``file:line:``."""


class UnusableRecord(Exception):
    """A well-formed record a text-only chat model cannot train on; ``reason`` is what it is counted as."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


@dataclass
class Records:
    """The conversations of a file and the records dropped from it, counted by reason."""

    conversations: list[Conversation]
    dropped: dict[str, int] = field(default_factory=dict)


def _content(value: Any, where: str, name: str) -> str:
    """A message's text: a string, or the text parts of a typed content list."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise SFTDataError(f"{where}: {name} must be a string or a list of typed parts")
    texts = []
    for j, part in enumerate(value):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise SFTDataError(f"{where}: {name}[{j}] needs a 'type' (e.g. text)")
        if kind != "text":
            raise UnusableRecord(f"non-text content ({kind})")
        if not isinstance(part.get("text"), str):
            raise SFTDataError(f"{where}: {name}[{j}] of type text needs a string 'text'")
        texts.append(part["text"])
    return "\n".join(texts)


def _chat(
    raw: Any, where: str, key: str, role_key: str, content_key: str, aliases: dict[str, str]
) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise SFTDataError(f"{where}: {key!r} must be a non-empty list")
    msgs = []
    for i, m in enumerate(raw):
        role = m.get(role_key) if isinstance(m, dict) else None
        if role in TOOL_ROLES or (isinstance(m, dict) and m.get("tool_calls")):
            raise UnusableRecord("tool turns")
        if not isinstance(role, str) or role not in aliases:
            names = ", ".join(sorted(aliases))
            raise SFTDataError(
                f"{where}: {key}[{i}] needs {role_key!r} in {names} and a {content_key!r}, got {role!r}"
            )
        msgs.append(Message(aliases[role], _content(m.get(content_key), where, f"{key}[{i}].{content_key}")))
    return msgs


def _lima(raw: list[str]) -> list[Message]:
    """LIMA's ``conversations``: plain strings, user first, alternating."""
    return [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(raw)]


def _alpaca(obj: dict[str, Any], where: str) -> list[Message]:
    instruction, extra, output = obj.get("instruction"), obj.get("input", ""), obj.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(extra, str | None):
        raise SFTDataError(
            f"{where}: Alpaca records need string 'instruction' and 'output' (and optional 'input')"
        )
    history = obj.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
        for turn in history
    ):
        raise SFTDataError(f"{where}: 'history' must be a list of [instruction, output] string pairs")
    msgs = []
    for question, answer in history:
        msgs += [Message("user", question), Message("assistant", answer)]
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return [*msgs, Message("user", prompt), Message("assistant", output)]


def _system(obj: dict[str, Any], msgs: list[Message], where: str) -> list[Message]:
    """A top-level ``system`` string (Alpaca/ShareGPT variants) as the first message."""
    system = obj.get("system")
    if system in (None, ""):
        return msgs
    if not isinstance(system, str):
        raise SFTDataError(f"{where}: 'system' must be a string")
    if msgs and msgs[0].role == "system":
        return msgs
    return [Message("system", system), *msgs]


def parse_record(obj: Any, where: str) -> Conversation:
    """A record of any supported format as a conversation.

    :class:`SFTDataError` for a malformed record, :class:`UnusableRecord` for one that is well-formed
    but has nothing a text chat model can train on.
    """
    if not isinstance(obj, dict):
        raise SFTDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        roles = {r: r for r in ROLES}
        msgs = _chat(obj["messages"], where, "messages", "role", "content", roles)
    elif "conversations" in obj:
        raw = obj["conversations"]
        if isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
            msgs = _lima(raw)
        elif isinstance(raw, list) and raw and isinstance(raw[0], dict) and "role" in raw[0]:
            msgs = _chat(raw, where, "conversations", "role", "content", {r: r for r in ROLES})
        else:
            msgs = _chat(raw, where, "conversations", "from", "value", SHAREGPT_ROLES)
    elif "instruction" in obj or "output" in obj:
        msgs = _alpaca(obj, where)
    elif "question" in obj and "answer" in obj:
        question, answer = obj["question"], obj["answer"]
        if not isinstance(question, str) or not isinstance(answer, str):
            raise SFTDataError(f"{where}: question/answer records need string 'question' and 'answer'")
        msgs = [Message("user", question), Message("assistant", answer)]
    else:
        raise SFTDataError(
            f"{where}: not a known SFT record: expected Alpaca (instruction/output), chat (messages), "
            "ShareGPT/LIMA (conversations) or question/answer fields"
        )
    msgs = _system(obj, msgs, where)
    if not any(m.role == "assistant" for m in msgs):
        raise SFTDataError(f"{where}: no assistant message, so nothing to learn")
    return Conversation(tuple(msgs), where)


def _json_array(path: Path, text: str) -> Iterator[tuple[Any, str]]:
    """Elements of a top-level JSON array, each with ``file:line: record [index]`` for messages."""
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip()) + 1
    index = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise SFTDataError(f"{path}:{text.count(chr(10)) + 1}: unterminated JSON array")
        if text[pos] == "]":
            if text[pos + 1 :].strip():
                line = text.count("\n", 0, pos) + 1
                raise SFTDataError(f"{path}:{line}: text after the end of the JSON array")
            return
        where = f"{path}:{text.count(chr(10), 0, pos) + 1}: record [{index}]"
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise SFTDataError(
                f"{path}:{exc.lineno}: record [{index}]: invalid JSON ({exc.msg}, column {exc.colno})"
            ) from exc
        yield obj, where
        index += 1


def _json_lines(path: Path, text: str) -> Iterator[tuple[Any, str]]:
    first = True
    for lineno, line_text in enumerate(text.splitlines(), 1):
        if not line_text.strip():
            continue
        try:
            obj = json.loads(line_text)
        except json.JSONDecodeError as exc:
            if first and _is_json(text):
                raise SFTDataError(
                    f"{path}:{lineno}: one JSON document spread over lines; expected an array of records "
                    "or one record per line"
                ) from None
            raise SFTDataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        first = False
        yield obj, f"{path}:{lineno}"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def read_records(path: str | Path) -> Records:
    """Every usable record of one ``.json`` / ``.jsonl`` file, in file order, and the dropped ones' count."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SFTDataError(f"{p}: SFT data file not found")
    text = p.read_text(encoding="utf-8")
    # A .json file is an array, or JSON lines (what datasets' to_json writes).
    items = _json_array(p, text) if text.lstrip().startswith("[") else _json_lines(p, text)
    out: list[Conversation] = []
    dropped: Counter[str] = Counter()
    for obj, where in items:
        try:
            out.append(parse_record(obj, where))
        except UnusableRecord as exc:
            if not dropped:
                log.warning("%s: dropped (%s); more are counted in the evaluation record", where, exc.reason)
            dropped[exc.reason] += 1
    if dropped:
        log.warning("%s: dropped %d record(s): %s", p, sum(dropped.values()), dict(dropped))
    if not out:
        detail = f" (dropped: {dict(dropped)})" if dropped else ""
        raise SFTDataError(f"{p}: no usable records{detail}")
    return Records(out, dict(dropped))


def load_records(path: str | Path) -> list[Conversation]:
    """The usable records of one ``.json`` / ``.jsonl`` file (see :func:`read_records`)."""
    return read_records(path).conversations


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


@dataclass
class Encoded:
    """Tokenised records: the examples kept, the records dropped (by reason) and how many were cut."""

    examples: list[Example]
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0


def encode_all(tok: Tokenizer, records: Sequence[Conversation], eos: str, max_length: int) -> Encoded:
    """Tokenise and truncate to ``max_length`` input tokens; records left with no answer token are dropped.

    Both are logged as warnings and counted: a context shorter than the data changes what is learned.
    """
    out: list[Example] = []
    dropped: Counter[str] = Counter()
    truncated = 0
    for rec in records:
        ex = encode(tok, rec.messages, eos)
        # max_length inputs need max_length + 1 ids (labels are shifted by one).
        ids, train = ex.ids[: max_length + 1], ex.train[: max_length + 1]
        if not any(train[1:]):
            dropped[f"answer starts beyond {max_length} tokens"] += 1
            continue
        if len(ex.ids) > max_length + 1:
            truncated += 1
        out.append(Example(ids, train))
    if dropped:
        log.warning(
            "dropped %d of %d SFT records whose answer starts beyond %d tokens",
            sum(dropped.values()),
            len(records),
            max_length,
        )
    if truncated:
        log.warning(
            "%d of %d SFT records are longer than %d tokens and were cut to that length",
            truncated,
            len(records),
            max_length,
        )
    return Encoded(out, dict(dropped), truncated)


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
