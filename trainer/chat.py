"""The chat template SFT trains under, as plain text, plus the Jinja form a HF tokenizer carries.

The role markers are special tokens of the run's BPE tokenizer (:data:`trainer.tokenizer.ROLE_TOKENS`,
one id each) and so of the exported HF tokenizer, which lets decoders skip them; a tokenizer
without them (runs from before they were added, outside tokenizers) spells them as text::

    <|system|>\\n{system}\\n<|user|>\\n{question}\\n<|assistant|>\\n{answer}<|endoftext|>\\n<|user|>\\n...

Each assistant answer ends with the end-of-text token, which is what greedy decoding stops on.
Rendering returns *segments* (text, trained-on) instead of one string: each segment is tokenised
on its own and the ids are concatenated, so the loss mask is exact at token level and a prompt for
generation tokenises exactly as it did in training. Every segment boundary is right after a
newline or a special token, where the tokenizer splits anyway, so this equals tokenising the
joined text in practice (the Jinja template below renders the same string).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
# "<|role|>" is trainer.tokenizer.ROLE_TOKENS; the newline after it is ordinary text.
MARKERS = {role: f"<|{role}|>\n" for role in ROLES}

# Jinja for transformers' ``apply_chat_template``; renders exactly :func:`render_text`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    content: str


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; ``train`` marks assistant answers (the only tokens with loss)."""

    text: str
    train: bool


def render(messages: Sequence[Message], eos: str, *, generation_prompt: bool = False) -> list[Segment]:
    """The conversation as segments; with ``generation_prompt`` it ends with the assistant marker."""
    out: list[Segment] = []
    for msg in messages:
        if msg.role not in MARKERS:
            raise ValueError(f"unknown role {msg.role!r}; expected one of {', '.join(ROLES)}")
        out.append(Segment(MARKERS[msg.role], False))
        if msg.role == "assistant":
            # The answer and its end token are learned; the newline after it is prompt formatting.
            out.append(Segment(msg.content + eos, True))
            out.append(Segment("\n", False))
        else:
            out.append(Segment(msg.content + "\n", False))
    if generation_prompt:
        out.append(Segment(MARKERS["assistant"], False))
    return out


def render_text(messages: Sequence[Message], eos: str, *, generation_prompt: bool = False) -> str:
    """The conversation as one string (what the Jinja template produces)."""
    return "".join(s.text for s in render(messages, eos, generation_prompt=generation_prompt))


def prompt_messages(instruction: str) -> list[Message]:
    """A single-turn prompt: one user message."""
    return [Message("user", instruction)]
