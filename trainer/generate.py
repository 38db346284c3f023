"""Greedy decoding with the megatron model (no KV cache) and exact-match scoring of task items.

Prompts of a batch are right-padded into one buffer. Attention is causal, so the logits at a
sequence's last real position never see the pads after it: one full forward per new token gives
exact greedy continuations for every sequence of the batch at once. Without a KV cache each step
re-reads the whole prefix, which is fine for the short answers of SFT tasks.

Decoding never runs past the model's context: a prompt that leaves less than ``max_new_tokens``
of it keeps its last tokens (with a warning), as evaluation harnesses do. Scoring compares the
whole answer by default, or what an extractor (:func:`extract_answer`) finds in the output and in
the reference: GSM8K's ``#### <number>`` or the match of a regex.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

import torch
from tokenizers import Tokenizer

from trainer.chat import prompt_messages
from trainer.sft_data import encode
from trainer.sft_suite import TaskItem

log = logging.getLogger(__name__)


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_id: int,
    vocab_size: int,
    pad_id: int,
    device: torch.device,
    batch_size: int = 64,
    context: int | None = None,
) -> list[list[int]]:
    """Greedy continuations (without the stop token) of each prompt; padded vocab rows are never chosen.

    With ``context``, a sequence stops growing at ``context`` tokens (prompt included); a longer
    prompt is refused (see :func:`fit_prompts`).
    """
    if context is not None and any(len(p) >= context for p in prompts):
        raise ValueError(
            f"a prompt leaves no room to generate within the model's context of {context} tokens"
        )
    model.eval()
    out: list[list[int]] = [[] for _ in prompts]
    # Similar lengths together: less padding per forward. The order is restored through ``idx``.
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        lengths = torch.tensor([len(prompts[i]) for i in idx])
        if int(lengths.min()) == 0:
            raise ValueError("cannot generate from an empty prompt")
        buf = torch.full((len(idx), int(lengths.max()) + max_new_tokens), pad_id, dtype=torch.long)
        for row, i in enumerate(idx):
            buf[row, : len(prompts[i])] = torch.tensor(prompts[i], dtype=torch.long)
        done = torch.zeros(len(idx), dtype=torch.bool)
        for _ in range(max_new_tokens):
            width = int(lengths.max())
            tokens = buf[:, :width].to(device)
            positions = torch.arange(width, device=device).unsqueeze(0).expand_as(tokens)
            logits = model(tokens, positions, None)
            last = logits[torch.arange(len(idx), device=device), (lengths - 1).to(device), :vocab_size]
            nxt = last.float().argmax(dim=-1).cpu()
            for row in range(len(idx)):
                if done[row]:
                    continue
                if int(nxt[row]) == stop_id:
                    done[row] = True
                    continue
                buf[row, lengths[row]] = nxt[row]
                out[idx[row]].append(int(nxt[row]))
                lengths[row] += 1
                if context is not None and int(lengths[row]) >= context:
                    done[row] = True
            if bool(done.all()):
                break
    return out


def fit_prompts(prompts: list[list[int]], context: int, max_new_tokens: int) -> tuple[list[list[int]], int]:
    """Prompts cut to their last ``context - max_new_tokens`` tokens (at least one) where longer,
    and how many were cut: the model never sees positions beyond its context."""
    room = max(1, context - max_new_tokens)
    cut = sum(len(p) > room for p in prompts)
    return [p[-room:] for p in prompts], cut


_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def _number(text: str) -> str:
    """A number as GSM8K writes it, normalised: no thousands commas, no trailing zeros after a point."""
    value = text.replace(",", "").strip()
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def extract_answer(
    text: str, extractor: str, pattern: str | None = None, *, reference: bool = False
) -> str | None:
    """The part of ``text`` an extractor compares (None when it finds nothing).

    ``whole``: the text itself. ``gsm8k``: the number after the last ``####``, else the last number
    (a reference without any is used whole). ``regex``: the first match of ``pattern`` (its first
    group if it has groups); a reference it does not match is used whole.
    """
    if extractor == "whole":
        return text
    if extractor == "gsm8k":
        if "####" in text:
            found = _NUMBER.search(text.rsplit("####", 1)[1])
            return _number(found.group()) if found else None
        numbers = _NUMBER.findall(text)
        return _number(numbers[-1]) if numbers else (text.strip() if reference else None)
    if extractor == "regex":
        if pattern is None:
            raise ValueError("answer_extractor=regex needs answer_regex")
        match = re.search(pattern, text)
        if match is None:
            return text.strip() if reference else None
        return (match.group(1) if match.groups() else match.group()).strip()
    raise ValueError(f"unknown answer extractor {extractor!r}; expected whole, gsm8k or regex")


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").lower()


def exact(pred: str, answer: str) -> bool:
    return pred.strip() == answer.strip()


def loose(pred: str, answer: str) -> bool:
    """Whitespace-, case- and final-period-insensitive match (free-text answers such as docstrings)."""
    return _normalise(pred) == _normalise(answer)


# Per-task scorers; tasks not listed use exact match.
SCORERS: dict[str, Callable[[str, str], bool]] = {"stdlib_doc": loose}


def score(pred: str, item: TaskItem, extractor: str = "whole", pattern: str | None = None) -> bool:
    """Whether ``pred`` answers ``item``: the task's scorer on whole answers, else equal extractions."""
    if extractor == "whole":
        return SCORERS.get(item.task, exact)(pred, item.answer)
    got = extract_answer(pred, extractor, pattern)
    want = extract_answer(item.answer, extractor, pattern, reference=True)
    return got is not None and want is not None and got == want


def task_accuracy(
    model: torch.nn.Module,
    tok: Tokenizer,
    items: Sequence[TaskItem],
    *,
    eos: str,
    stop_id: int,
    vocab_size: int,
    pad_id: int,
    device: torch.device,
    max_new_tokens: int,
    batch_size: int = 64,
    context: int | None = None,
    extractor: str = "whole",
    pattern: str | None = None,
    report: dict[str, int] | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Accuracy per task and their mean (key ``all``), plus the decoded answers in item order.

    ``extractor``/``pattern`` choose what is compared (:func:`extract_answer`); ``whole`` keeps the
    per-task scorers. With ``context``, prompts too long for it are cut, counted in
    ``report["prompts_cut"]`` and warned about.
    """
    prompts = [list(encode(tok, prompt_messages(it.prompt), eos, generation_prompt=True).ids) for it in items]
    if context is not None:
        prompts, cut = fit_prompts(prompts, context, max_new_tokens)
        if cut:
            log.warning(
                "%d of %d task prompts leave less than max_new_tokens=%d of the model's %d-token context; "
                "they keep their last %d tokens",
                cut,
                len(prompts),
                max_new_tokens,
                context,
                max(1, context - max_new_tokens),
            )
        if report is not None:
            report["prompts_cut"] = cut
    gens = greedy_generate(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        stop_id=stop_id,
        vocab_size=vocab_size,
        pad_id=pad_id,
        device=device,
        batch_size=batch_size,
        context=context,
    )
    preds = [tok.decode(g, skip_special_tokens=False) for g in gens]
    hits: dict[str, list[bool]] = {}
    for it, pred in zip(items, preds, strict=True):
        hits.setdefault(it.task, []).append(score(pred, it, extractor, pattern))
    acc = {task: sum(h) / len(h) for task, h in sorted(hits.items())}
    # Macro average: each task counts the same, however many items it has.
    acc["all"] = sum(acc.values()) / len(acc) if acc else 0.0
    return acc, preds
