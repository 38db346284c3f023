"""Fixtures of the SFT/evaluation tests: one tiny pre-trained run per session, in a local store.

The run is produced by the real training loop (a 2-layer, 64-wide model, 60 steps on 400 kB of the
built-in corpus) so evaluation reads exactly what the product reads. An untrained copy with the
same shape is published as a model, which also exercises the ``runs/<run>/models/<name>`` path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import make_settings
from wsm.store import Store

RUN = "tiny"
STEPS = 60
TOKENS_PER_STEP = 8 * 128


@dataclass
class TinyRun:
    """The session's store, run name and the two model dirs tests evaluate."""

    store: Store
    run: str
    trained: str
    untrained: str
    cache_dir: str


def tiny_train_config(store_url: str, cache_dir: str) -> Any:
    from trainer.config import TrainConfig

    return TrainConfig.model_validate(
        {
            "run": RUN,
            "store": store_url,
            "seed": 1,
            "train_tokens": STEPS * TOKENS_PER_STEP,
            "micro_batch_size": 8,
            "global_batch_size": 8,
            "threads": 2,
            "log_every": 20,
            # fp32 on every machine: the evaluation tests compare with the trainer's own val loss.
            "device": "cpu",
            "model": {
                "preset": None,
                "num_layers": 2,
                "hidden_size": 64,
                "ffn_hidden_size": 176,
                "num_attention_heads": 4,
                "num_query_groups": 2,
                "seq_length": 128,
            },
            "data": {
                "builtin_max_bytes": 400_000,
                "vocab_size": 1024,
                "valid_fraction": 0.05,
                "valid_samples": 8,
                "cache_dir": cache_dir,
            },
            "optim": {"lr": 3e-3},
            "schedule": {"warmup": "8k"},
            "checkpoint": {"save_every": str(STEPS * TOKENS_PER_STEP), "resume": False},
        }
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyRun]:
    from trainer.loop import Trainer
    from trainer.model import build_model

    root = tmp_path_factory.mktemp("sft-eval")
    cache_dir = str(root / "cache")
    saved = os.environ.get("WSM_CACHE_DIR")
    # Evaluation reads the corpus cache from the default cache dir, like a worker would.
    os.environ["WSM_CACHE_DIR"] = cache_dir
    store = Store(str(root / "store"), settings=make_settings())
    cfg = tiny_train_config(store.url, cache_dir)
    trainer = Trainer(cfg, store=store)
    trainer.train()
    trained = store.latest_checkpoint(RUN)
    assert trained is not None
    model = build_model(cfg.model, trainer.vocab, seed=99)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    tmp = Path(root / "untrained.safetensors")
    save_file(weights, str(tmp))
    with store.publish_model(RUN, "untrained", kind="baseline", tokens=0, dtype="float32") as pub:
        pub.put_file("model.safetensors", tmp)
    try:
        yield TinyRun(store, RUN, trained.dir, f"runs/{RUN}/models/untrained", cache_dir)
    finally:
        if saved is None:
            os.environ.pop("WSM_CACHE_DIR", None)
        else:
            os.environ["WSM_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_run: TinyRun) -> Any:
    from trainer.load import resolve

    return resolve(tiny_run.store, tiny_run.run, tiny_run.trained).tokenizer()


def fast_eval_config(**overrides: Any) -> Any:
    """An EvalConfig sized for tests: a small built-in suite, few Hutchinson samples, short answers."""
    from wsm.eval_config import EvalConfig

    base: dict[str, Any] = {
        "builtin_train_per_task": 24,
        "builtin_valid_per_task": 4,
        "builtin_doc_items": 40,
        "sft": {"batch_size": 8, "lr": 3e-3},
        "sharpness": {"samples": 4, "seq_length": 64, "batch_size": 1, "batches": 1},
        "max_new_tokens": 8,
        "eval_batch_size": 32,
        "device": "cpu",
    }
    base.update(overrides)
    return EvalConfig.model_validate(base)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


def micro_model(seq_length: int) -> Any:
    """A one-layer GQA model (vocab 128, 4 heads in 2 groups), seed 0: for decoding and HVP tests."""
    from trainer.config import ModelConfig
    from trainer.distributed import init_distributed
    from trainer.model import build_model

    init_distributed(1)
    cfg = ModelConfig(
        preset=None,
        num_layers=1,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        seq_length=seq_length,
    )
    return build_model(cfg, 128, seed=0)
