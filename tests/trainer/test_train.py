"""Single-process training on the built-in corpus: learning, WSO LR, checkpoints in the store, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import tiny_overrides
from trainer.checkpoint import CheckpointError, load_checkpoint
from trainer.config import load_config
from trainer.load import fetch_tokenizer, load_run_model
from trainer.loop import Trainer
from trainer.tokenizer import load_tokenizer
from trainer.weights import local_state_dict, unwrap


def make(cache: Path, store: Any, run: str, **extra: Any) -> Trainer:
    return Trainer(load_config(None, tiny_overrides(cache, run=run, **extra)), store=store)


@pytest.fixture(scope="module")
def trained(data_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """One 40-step WSO run shared by the read-only checks below."""
    from wsm.store import Store

    store = Store(str(tmp_path_factory.mktemp("store")))
    trainer = make(data_cache, store, "main", train_tokens=10240)
    return store, trainer.train()


def test_loss_falls_on_the_builtin_corpus(trained: tuple[Any, Any]) -> None:
    _, result = trained
    assert result.step == 40
    assert result.losses[-1] < result.losses[0] - 0.5, result.losses


def test_lr_is_constant_after_warmup(trained: tuple[Any, Any]) -> None:
    _, result = trained
    warmup = 4  # 1k tokens at 256 tokens/step
    assert result.lrs[0] == pytest.approx(3e-3 / warmup)
    assert result.lrs[warmup - 1 :] == pytest.approx([3e-3] * (40 - warmup + 1))


def test_checkpoints_and_metrics_are_in_the_store(trained: tuple[Any, Any]) -> None:
    store, result = trained
    ckpts = store.list_checkpoints("main")
    assert [c.tokens for c in ckpts] == [2560, 5120, 7680, 10240]
    assert result.checkpoints == [2560, 5120, 7680, 10240]
    last = ckpts[-1]
    names = {f.name for f in last.files}
    assert last.step == 40 and names >= {
        "latest_checkpointed_iteration.txt",  # Megatron-LM's layout, every file in the manifest
        "iter_0000040/.metadata",
        "iter_0000040/common.pt",
        "iter_0000040/metadata.json",
        "train_state.json",
    }
    assert any(n.startswith("iter_0000040/__0_") and n.endswith(".distcp") for n in names)
    assert not any(n.endswith(".safetensors") for n in names)  # nothing gathered
    assert last.extra["val_loss"] > 0
    store.verify(last)  # sizes and sha256 match the manifest
    run = store.get_run("main")
    assert run.model["num_layers"] == 2 and run.schedule["style"] == "wso"
    assert run.tokenizer["vocab_size"] == 512 and run.data["fingerprint"]
    metrics = store.read_metrics("main")
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(metrics[0])
    assert sum("val_loss" in m for m in metrics) == 4


def test_stored_weights_load_back_strictly(trained: tuple[Any, Any], tmp_path: Path) -> None:
    store, _ = trained
    model = load_run_model(store, "main")
    weights = load_checkpoint(store, store.latest_checkpoint("main"), with_state=False).weights
    assert not any("_extra_state" in k for k in weights)
    # Plain torch strict loading works too: the parallel linears refill their own extra state.
    unwrap(model).load_state_dict(local_state_dict(weights, model), strict=False)
    missing = [k for k in unwrap(model).state_dict() if k not in weights and not k.endswith("_extra_state")]
    assert missing == []
    tok = load_tokenizer(fetch_tokenizer(store, store.get_run("main"), str(tmp_path)))
    ids = torch.tensor([tok.encode("def main():\n    return 0\n").ids])
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids, pos, None)
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()


def test_resume_gives_identical_weights(data_cache: Path, local_store: Any, trained: tuple[Any, Any]) -> None:
    store_full, _ = trained
    first = make(data_cache, local_store, "main", train_tokens=5120).train()
    assert first.step == 20
    second = make(data_cache, local_store, "main", train_tokens=10240)
    assert second.step == 20  # resumed from the newest checkpoint
    assert second.train().step == 40
    a = load_checkpoint(store_full, store_full.get_checkpoint("main", 10240), with_state=False).weights
    b = load_checkpoint(local_store, local_store.get_checkpoint("main", 10240), with_state=False).weights
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_changed_config_refuses_to_resume(data_cache: Path, local_store: Any) -> None:
    make(data_cache, local_store, "r", train_tokens=2560).train()
    with pytest.raises(ValueError, match=r"(?s)different configuration.*optim"):
        make(data_cache, local_store, "r", train_tokens=5120, **{"optim.lr": 1e-3})


def test_failed_upload_stops_training_loudly(
    data_cache: Path, local_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise OSError("disk full")

    trainer = make(data_cache, local_store, "broken", train_tokens=10240, **{"checkpoint.upload_retries": 1})
    assert trainer.saver is not None
    trainer.saver.backoff_s = 0.01
    monkeypatch.setattr(local_store, "publish_checkpoint", broken)
    with pytest.raises(CheckpointError, match="disk full"):
        trainer.train()
    assert len(calls) == 2  # first try + one retry, never silently skipped
    assert trainer.step < 40


def test_validation_uses_exactly_valid_samples(data_cache: Path, local_store: Any) -> None:
    trainer = make(data_cache, local_store, "val", **{"data.valid_samples": 3})
    assert trainer.valid is not None and len(trainer.valid) > 3, "megatron builds a whole epoch of the split"
    seen: list[int] = []
    real = trainer.engine.eval_loss
    trainer.engine.eval_loss = lambda batch: seen.append(len(batch["tokens"])) or real(batch)  # type: ignore[method-assign]
    assert trainer.validation_loss() is not None
    assert sum(seen) == 3
