"""megatron-core's torch_dist save on a CPU-only machine: fails without the shim, round-trips exactly with
it, in the background too; its writer results manager does not outlive a killed trainer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def _patched() -> list[Any]:
    """Every function the CPU shim replaces, as currently installed."""
    from megatron.core.dist_checkpointing.strategies import async_utils, filesystem_async
    from megatron.core.dist_checkpointing.strategies import torch as mcore_torch

    return [
        filesystem_async.FileSystemWriterAsync.__dict__["preload_tensors"],
        mcore_torch.save_state_dict_async_finalize,
        async_utils.TemporalAsyncCaller.schedule_async_call,
        async_utils.AsyncCaller.sync_all_async_calls,
        async_utils.AsyncCallsQueue.maybe_finalize_async_calls,
    ]


def test_patches_only_inside_and_only_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    originals = _patched()
    current_device, synchronize = torch.cuda.current_device, torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with cpu_save_support():
        assert all(a is not b for a, b in zip(_patched(), originals, strict=True))
        # redirected only while the patched functions run
        assert (torch.cuda.current_device, torch.cuda.synchronize) == (current_device, synchronize)
    assert all(a is b for a, b in zip(_patched(), originals, strict=True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with cpu_save_support():
        assert all(a is b for a, b in zip(_patched(), originals, strict=True))
    with cpu_save_support(on_cpu=True):  # a CPU run on a CUDA machine
        assert all(a is not b for a, b in zip(_patched(), originals, strict=True))
    with cpu_save_support(on_cpu=False):
        assert all(a is b for a, b in zip(_patched(), originals, strict=True))


def test_async_save_and_finalize_through_megatrons_queue(tmp_path: Path) -> None:
    """The background path the trainer uses: megatron's AsyncCallsQueue forks the writer; the shim
    keeps its CUDA calls away. What the writer saves is the state at scheduling time."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

    model = _model(1)
    queue = AsyncCallsQueue()
    finalized: list[bool] = []
    with cpu_save_support():
        request = dist_checkpointing.save(model.sharded_state_dict(), str(tmp_path), async_sharded_save=True)
        assert request is not None
        request.add_finalize_fn(lambda: finalized.append((tmp_path / ".metadata").exists()))
        queue.schedule_async_request(request)
    saved = {k: v.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # training goes on while the writer writes
    with cpu_save_support():
        queue.maybe_finalize_async_calls(blocking=True)
    assert finalized == [True]  # .metadata is written by megatron's finalize, before ours
    loaded = _model(2)
    loaded.load_state_dict(dist_checkpointing.load(loaded.sharded_state_dict(), str(tmp_path)))
    for name, p in loaded.named_parameters():
        assert torch.equal(p, saved[name]), name


def test_results_queue_manager_ends_with_a_killed_trainer(tmp_path: Path) -> None:
    """megatron's own manager process would outlive a SIGKILLed trainer; ours does not."""
    script = (
        "import os, sys, time\n"
        "from megatron.core.dist_checkpointing.strategies import filesystem_async\n"
        "from trainer.dist_checkpoint import install_results_queue\n"
        "if __name__ == '__main__':\n"
        "    install_results_queue()\n"
        "    print(filesystem_async._results_queue._manager._process.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    (tmp_path / "holder.py").write_text(script)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "holder.py")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        manager = int(proc.stdout.readline())
        assert _alive(manager)
    finally:
        proc.kill()
        proc.wait(30)
    deadline = time.monotonic() + 60
    while _alive(manager) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(manager)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
