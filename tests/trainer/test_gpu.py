"""GPU path (megatron DDP + optimizer, bf16): runs only where CUDA is available."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import tiny_overrides

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_gpu_training_writes_loadable_checkpoints(data_cache: Path, local_store: Any) -> None:
    from trainer.config import load_config
    from trainer.load import load_run_model
    from trainer.loop import Trainer

    cfg = load_config(None, tiny_overrides(data_cache, run="gpu", train_tokens=5120, device="cuda"))
    result = Trainer(cfg, store=local_store).train()
    assert result.losses[-1] < result.losses[0]
    assert [c.tokens for c in local_store.list_checkpoints("gpu")] == [2560, 5120]
    load_run_model(local_store, "gpu")  # bf16 weights load into a CPU fp32 model
