"""torchrun on CPU (gloo): 2-process data parallel and TP=2 match one process with the same global batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import tiny_overrides, torchrun_train
from trainer.checkpoint import load_checkpoint
from trainer.config import load_config
from trainer.loop import Trainer

STEPS_TOKENS = 2560  # 10 steps


@pytest.fixture(scope="module")
def reference(data_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    from wsm.store import Store

    store = Store(str(tmp_path_factory.mktemp("ref")))
    Trainer(
        load_config(None, tiny_overrides(data_cache, run="ref", train_tokens=STEPS_TOKENS)), store=store
    ).train()
    return load_checkpoint(store, store.latest_checkpoint("ref"), with_state=False).weights


def _torchrun(tmp_path: Path, overrides: list[str]) -> Any:
    from wsm.store import Store

    store_dir = tmp_path / "store"
    torchrun_train(2, [*overrides, f"store={store_dir}"], OMP_NUM_THREADS="1")
    store = Store(str(store_dir))
    return load_checkpoint(store, store.latest_checkpoint("dist"), with_state=False).weights


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3, msg=k)


@pytest.mark.slow
def test_data_parallel_matches_single_process(
    data_cache: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    # Global batch 4 = 2 ranks × 1 micro-batch of 2: same samples, gradients averaged by DDP.
    weights = _torchrun(tmp_path, tiny_overrides(data_cache, run="dist", train_tokens=STEPS_TOKENS))
    _assert_close(weights, reference)


@pytest.mark.slow
def test_tensor_parallel_matches_single_process(
    data_cache: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    overrides = tiny_overrides(
        data_cache, run="dist", train_tokens=STEPS_TOKENS, **{"parallel.tensor_parallel": 2}
    )
    weights = _torchrun(tmp_path, overrides)  # the stored weights are gathered full tensors
    _assert_close(weights, reference)
