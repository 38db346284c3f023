"""Shared fixtures: one small corpus/tokenizer cache for the whole session and a tiny model config.

The cache directory is session-scoped, so the BPE and the indexed dataset are built once; every
Trainer in the session (and every subprocess, via WSM_CACHE_DIR) hits the cache.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
warnings.filterwarnings("ignore", message=".*Apex.*")


def tiny_overrides(cache_dir: Path | str, **extra: Any) -> list[str]:
    """--set strings for a ~100k-parameter model on 600 kB of the built-in corpus, 256 tokens/step."""
    base = {
        "data.builtin_max_bytes": 600_000,
        "data.vocab_size": 512,
        "data.cache_dir": str(cache_dir),
        "data.valid_samples": 8,
        "data.valid_fraction": 0.1,
        "model.num_layers": 2,
        "model.hidden_size": 64,
        "model.ffn_hidden_size": 128,
        "model.num_attention_heads": 4,
        "model.num_query_groups": 2,
        "model.seq_length": 64,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "schedule.warmup": "1k",
        "optim.lr": 3e-3,
        "checkpoint.save_every": 2560,
        "log_every": 5,
        "threads": 1,
        "seed": 7,
        # CPU semantics (fp32, bit-exact resume, gloo torchrun) on every machine; GPU tests ask for cuda.
        "device": "cpu",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session cache dir with the test corpus prepared once."""
    from trainer.config import load_config
    from trainer.data import prepare_data

    cache = tmp_path_factory.mktemp("wsm-cache")
    prepare_data(load_config(None, tiny_overrides(cache)).data)
    return cache


@pytest.fixture()
def local_store(tmp_path: Path) -> Any:
    from wsm.store import Store

    return Store(str(tmp_path / "store"))


@pytest.fixture(autouse=True)
def _quiet_megatron() -> Iterator[None]:
    logging.getLogger("megatron").setLevel(logging.WARNING)
    yield


def torchrun_train(nproc: int, overrides: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node N -m wsm.cli train --set ...``; fails the test on error."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "wsm.cli",
        "train",
        *[a for s in overrides for a in ("--set", s)],
    ]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        cmd,
        cwd=root,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc
