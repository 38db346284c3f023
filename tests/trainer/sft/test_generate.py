"""Batched greedy decoding equals one-prompt-at-a-time decoding (right padding is exact)."""

from __future__ import annotations

import torch

from tests.trainer.sft.conftest import micro_model
from trainer.generate import exact, greedy_generate, loose


def test_batched_greedy_matches_single() -> None:
    model = micro_model(seq_length=64).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 100, (n,), generator=g).tolist() for n in (3, 9, 5, 1)]
    kw = {"max_new_tokens": 6, "stop_id": 127, "vocab_size": 100, "pad_id": 0, "device": torch.device("cpu")}
    batched = greedy_generate(model, prompts, batch_size=4, **kw)
    single = [greedy_generate(model, [p], batch_size=1, **kw)[0] for p in prompts]
    assert batched == single
    assert all(t < 100 for out in batched for t in out)  # padded vocab rows are never chosen


def test_scorers() -> None:
    assert exact(" 42 ", "42") and not exact("42.", "42")
    assert loose("Return  the sum.", "return the sum")
