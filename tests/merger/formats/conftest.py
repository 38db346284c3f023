"""Session fixtures of the format tests: real Megatron, torchtitan and OLMo-core DCP checkpoints (cached)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

# dcp_fixtures.py sits beside this file; importlib import mode does not put test dirs on sys.path.
sys.path.insert(0, str(Path(__file__).parent))

import dcp_fixtures
import dcp_merge_fixtures

warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
warnings.filterwarnings("ignore", message=".*Apex.*")


@pytest.fixture(scope="session")
def megatron_tp1() -> Path:
    """A Megatron-LM save dir at TP=1, saved in this process (iter_0000010 fp32+optimizer, iter_0000020 bf16)."""
    return dcp_fixtures.cached("megatron-tp1", lambda d: dcp_fixtures.megatron_run(d, 1))


@pytest.fixture(scope="session")
def megatron_tp2() -> Path:
    """The same at TP=2, saved by two gloo processes under torchrun."""
    return dcp_fixtures.cached("megatron-tp2", lambda d: dcp_fixtures.megatron_run_torchrun(d, 2))


@pytest.fixture(scope="session")
def titan_root() -> Path:
    """A torchtitan checkpoint folder: step-100/, step-200/."""
    return dcp_fixtures.cached("torchtitan", dcp_fixtures.torchtitan_run)


@pytest.fixture(scope="session")
def olmo_root() -> Path:
    """An OLMo-core save folder: step1000/model_and_optim/, step2000/model_and_optim/."""
    return dcp_fixtures.cached("olmo-core", dcp_fixtures.olmo_run)


@pytest.fixture(scope="session")
def megatron_merge_tp1() -> Path:
    """Megatron save dirs ``bf16/`` (iterations 100, 200, 300) and ``fp32/`` (100, 200) at TP=1."""
    return dcp_merge_fixtures.cached_run(1)


@pytest.fixture(scope="session")
def megatron_merge_tp2() -> Path:
    """The same at TP=2 (two gloo processes under torchrun)."""
    return dcp_merge_fixtures.cached_run(2)
