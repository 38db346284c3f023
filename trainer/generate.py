"""Greedy decoding with the megatron model (no KV cache) and exact-match scoring of task items.

Prompts of a batch are right-padded into one buffer. Attention is causal, so the logits at a
sequence's last real position never see the pads after it: one full forward per new token gives
exact greedy continuations for every sequence of the batch at once. Without a KV cache each step
re-reads the whole prefix, which is fine for the short answers of SFT tasks.
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
) -> list[list[int]]:
    """Greedy continuations (without the stop token) of each prompt; padded vocab rows are never chosen."""
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
            if bool(done.all()):
                break
    return out


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").lower()


def exact(pred: str, answer: str) -> bool:
    return pred.strip() == answer.strip()


def loose(pred: str, answer: str) -> bool:
    """Whitespace-, case- and final-period-insensitive match (free-text answers such as docstrings)."""
    return _normalise(pred) == _normalise(answer)


# Per-task scorers; tasks not listed use exact match.
SCORERS: dict[str, Callable[[str, str], bool]] = {"stdlib_doc": loose}


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
) -> tuple[dict[str, float], list[str]]:
    """Accuracy per task and their mean (key ``all``), plus the decoded answers in item order."""
    prompts = [list(encode(tok, prompt_messages(it.prompt), eos, generation_prompt=True).ids) for it in items]
    gens = greedy_generate(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        stop_id=stop_id,
        vocab_size=vocab_size,
        pad_id=pad_id,
        device=device,
        batch_size=batch_size,
    )
    preds = [tok.decode(g, skip_special_tokens=False) for g in gens]
    hits: dict[str, list[bool]] = {}
    for it, pred in zip(items, preds, strict=True):
        hits.setdefault(it.task, []).append(SCORERS.get(it.task, exact)(pred, it.answer))
    acc = {task: sum(h) / len(h) for task, h in sorted(hits.items())}
    # Macro average: each task counts the same, however many items it has.
    acc["all"] = sum(acc.values()) / len(acc) if acc else 0.0
    return acc, preds
