"""Plain-text files -> documents: cut at blank lines (packed up to a size), at a marker, or by size.

A document is the unit megatron's validation split holds out and the boundary an end-of-document
token marks, so a whole book in one ``.txt`` file must not stay one document. Every mode returns
exact substrings of the file (only the cut points' separators are left out), in file order, and
drops pieces that are only whitespace.

* ``blank_lines``: cut at runs of blank lines, then pack consecutive paragraphs into documents of
  at most ``max_chars`` characters (a paragraph longer than that is cut as in ``chars``). Small
  files stay one document; a play or a book becomes pieces of a few pages that keep local context.
* ``separator``: cut at every occurrence of ``separator`` (e.g. ``<|endoftext|>`` or ``\\n---\\n``);
  documents keep their size.
* ``chars``: pieces of at most ``max_chars`` characters, each ending at a line break where the
  window has one in its second half.
* ``none``: the whole file is one document.
"""

from __future__ import annotations

import re
from typing import Literal

TextSplit = Literal["blank_lines", "separator", "chars", "none"]
TEXT_SPLITS: tuple[str, ...] = ("blank_lines", "separator", "chars", "none")

# One or more blank (whitespace-only) lines, with the line break before them.
_BLANK_RUN = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")


def split_chars(text: str, max_chars: int) -> list[str]:
    """Pieces of at most ``max_chars`` characters, cut after a line break when one is near the end."""
    out: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            cut = text.rfind("\n", start + max_chars // 2, end)
            end = cut + 1 if cut >= 0 else end
        out.append(text[start:end])
        start = end
    return out


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _BLANK_RUN.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def split_blank_lines(text: str, max_chars: int) -> list[str]:
    """Paragraphs packed in order into documents of at most ``max_chars`` (long paragraphs cut by size)."""
    out: list[str] = []
    first: int | None = None
    last = 0
    for a, b in _paragraph_spans(text):
        if first is not None and b - first > max_chars:
            out.append(text[first:last])
            first = None
        if b - a > max_chars:
            out.extend(split_chars(text[a:b], max_chars))
            continue
        if first is None:
            first = a
        last = b
    if first is not None:
        out.append(text[first:last])
    return out


def split_text(text: str, mode: str, *, separator: str | None = None, max_chars: int = 4000) -> list[str]:
    """The documents of one file's text under ``mode`` (see the module docstring)."""
    if mode == "none":
        pieces = [text]
    elif mode == "blank_lines":
        pieces = split_blank_lines(text, max_chars)
    elif mode == "chars":
        pieces = split_chars(text, max_chars)
    elif mode == "separator":
        if not separator:
            raise ValueError("data.text_split=separator needs data.text_separator (e.g. '<|endoftext|>')")
        pieces = [p.strip("\r\n") for p in text.split(separator)]
    else:
        raise ValueError(f"unknown text split {mode!r}; expected one of {', '.join(TEXT_SPLITS)}")
    return [p for p in pieces if p.strip()]
