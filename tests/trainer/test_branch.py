"""A decay branch forks a run at a checkpoint, follows the requested curve, and lands as a baseline model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import tiny_overrides
from trainer.branch import decay_branch
from trainer.config import load_config
from trainer.load import load_run_model, load_weights
from trainer.loop import Trainer


def test_branch_follows_the_curve_and_is_published(data_cache: Path, local_store: Any) -> None:
    Trainer(
        load_config(None, tiny_overrides(data_cache, run="b", train_tokens=2560)), store=local_store
    ).train()
    out = decay_branch("b", fork="2560", window="2560", curve="1-sqrt", store=local_store)
    m = out.manifest
    assert m is not None and m.kind == "baseline"
    assert (m.branch_tokens, m.tokens) == (2560, 5120)
    assert m.window is not None and (m.window.start_tokens, m.window.end_tokens) == (2560, 5120)
    steps = 10  # 2560 tokens at 256 tokens/step
    expected = [3e-3 * (1 - math.sqrt(i / steps)) for i in range(1, steps + 1)]
    assert out.train.lrs == pytest.approx(expected, abs=1e-12)
    assert m.extra["lrs"] == pytest.approx(expected, abs=1e-12)
    # Its losses with the step of each (logged every 5 steps), so the API can draw it from the fork.
    assert m.extra["loss_steps"] == [15, 20] and m.extra["losses"] == pytest.approx(out.train.losses)
    # The run itself is untouched: no new checkpoint from the branch.
    assert [c.tokens for c in local_store.list_checkpoints("b")] == [2560]
    weights = load_weights(local_store, m)
    model = load_run_model(local_store, "b", model=m.name)
    first = next(iter(weights))
    assert torch.equal(dict(model.named_parameters())[first].detach(), weights[first])
    with pytest.raises(ValueError, match="no checkpoint at"):
        decay_branch("b", fork="1000", window="2560", store=local_store)
