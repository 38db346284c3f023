"""torchrun on CPU (gloo): data parallel and TP=2 × DP=2 match one process with the same global batch,
and a TP=2 × DP=2 checkpoint resumes in one process (megatron reshards) on the same loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import tiny_overrides, torchrun_train
from trainer.checkpoint import load_checkpoint
from trainer.config import load_config
from trainer.loop import Trainer, TrainResult

STEPS_TOKENS = 2560  # 10 steps: where the torchrun runs stop and save
TOTAL_TOKENS = 5120  # 20 steps: where the resumed run stops
ATOL, RTOL = 2e-4, 1e-3


@pytest.fixture(scope="module")
def reference(data_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, TrainResult]:
    """One process, 20 steps, checkpoints at 10 and 20 steps."""
    from wsm.store import Store

    store = Store(str(tmp_path_factory.mktemp("ref")))
    result = Trainer(
        load_config(None, tiny_overrides(data_cache, run="ref", train_tokens=TOTAL_TOKENS)), store=store
    ).train()
    return store, result


def _weights(store: Any, run: str, tokens: int) -> dict[str, torch.Tensor]:
    return load_checkpoint(store, store.get_checkpoint(run, tokens), with_state=False).weights


def _torchrun(tmp_path: Path, nproc: int, overrides: list[str]) -> Any:
    from wsm.store import Store

    store_dir = tmp_path / "store"
    torchrun_train(nproc, [*overrides, f"store={store_dir}"], OMP_NUM_THREADS="1")
    return Store(str(store_dir))


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=k)


@pytest.mark.slow
def test_data_parallel_matches_single_process(
    data_cache: Path, tmp_path: Path, reference: tuple[Any, TrainResult]
) -> None:
    # Global batch 4 = 2 ranks × 1 micro-batch of 2: same samples, gradients averaged by DDP.
    store = _torchrun(tmp_path, 2, tiny_overrides(data_cache, run="dist", train_tokens=STEPS_TOKENS))
    _assert_close(_weights(store, "dist", STEPS_TOKENS), _weights(reference[0], "ref", STEPS_TOKENS))


@pytest.mark.slow
def test_tp2_dp2_matches_and_resumes_resharded_in_one_process(
    data_cache: Path, tmp_path: Path, reference: tuple[Any, TrainResult]
) -> None:
    ref_store, ref_result = reference
    overrides = tiny_overrides(
        data_cache, run="dist", train_tokens=STEPS_TOKENS, **{"parallel.tensor_parallel": 2}
    )
    store = _torchrun(tmp_path, 4, overrides)  # every rank wrote its own shards
    saved = store.get_checkpoint("dist", STEPS_TOKENS)
    ranks = {f.name.split("/")[1].split("_")[2] for f in saved.files if f.name.endswith(".distcp")}
    assert ranks == {"0", "1", "2", "3"}
    _assert_close(_weights(store, "dist", STEPS_TOKENS), _weights(ref_store, "ref", STEPS_TOKENS))

    # Resume the TP=2 × DP=2 checkpoint at TP=1 × DP=1: megatron reshards weights and AdamW moments.
    resumed = Trainer(
        load_config(None, tiny_overrides(data_cache, run="dist", train_tokens=TOTAL_TOKENS)), store=store
    )
    assert resumed.step == 10
    result = resumed.train()
    assert result.step == 20
    # Same loss at the same steps (15 and 20) as the uninterrupted single process, same weights.
    torch.testing.assert_close(
        torch.tensor(result.losses), torch.tensor(ref_result.losses[-2:]), atol=ATOL, rtol=RTOL
    )
    _assert_close(_weights(store, "dist", TOTAL_TOKENS), _weights(ref_store, "ref", TOTAL_TOKENS))
