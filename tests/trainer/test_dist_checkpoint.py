"""megatron-core's torch_dist save on a CPU-only machine: fails without the shim, round-trips exactly with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.config import ModelConfig
from trainer.dist_checkpoint import cpu_save_support
from trainer.distributed import init_distributed
from trainer.model import build_model

TINY = ModelConfig(
    preset=None, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2
)


def _model(seed: int) -> Any:
    init_distributed(1)
    return build_model(TINY, 128, seed=seed)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="the failure it guards against needs a CPU-only machine"
)
def test_save_needs_the_shim_on_cpu(tmp_path: Path) -> None:
    from megatron.core import dist_checkpointing

    with pytest.raises((AssertionError, RuntimeError)):  # "Torch not compiled with CUDA" or "no driver"
        dist_checkpointing.save(_model(1).sharded_state_dict(), str(tmp_path))


def test_save_and_load_round_trip_exactly(tmp_path: Path) -> None:
    from megatron.core import dist_checkpointing

    saved = _model(1)
    with cpu_save_support():
        dist_checkpointing.save(saved.sharded_state_dict(), str(tmp_path))
    assert {".metadata", "common.pt", "metadata.json"} <= {p.name for p in tmp_path.iterdir()}
    loaded = _model(2)
    before = {k: v.clone() for k, v in loaded.state_dict().items() if isinstance(v, torch.Tensor)}
    loaded.load_state_dict(dist_checkpointing.load(loaded.sharded_state_dict(), str(tmp_path)))
    params = dict(loaded.named_parameters())
    assert any(not torch.equal(before[k], params[k]) for k in params)
    for name, p in saved.named_parameters():
        assert torch.equal(p, params[name]), name


def test_patches_only_inside_and_only_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.dist_checkpointing.strategies import torch as mcore_torch

    preload = filesystem_async.FileSystemWriterAsync.__dict__["preload_tensors"]
    finalize = mcore_torch.save_state_dict_async_finalize
    current_device = torch.cuda.current_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with cpu_save_support():
        assert filesystem_async.FileSystemWriterAsync.__dict__["preload_tensors"] is not preload
        assert mcore_torch.save_state_dict_async_finalize is not finalize
        assert torch.cuda.current_device is current_device  # redirected only while finalize runs
    assert filesystem_async.FileSystemWriterAsync.__dict__["preload_tensors"] is preload
    assert mcore_torch.save_state_dict_async_finalize is finalize
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with cpu_save_support():
        assert filesystem_async.FileSystemWriterAsync.__dict__["preload_tensors"] is preload
        assert mcore_torch.save_state_dict_async_finalize is finalize
