"""A merge written in Megatron's ``torch_dist`` layout into the store is a model like any other:
``wsm evaluate`` and ``wsm export`` read it (by byte range, through the merger's DCP reader)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import make_settings
from tests.trainer.sft.conftest import TinyRun, fast_eval_config
from tests.trainer.sft.test_mergekit import _more_checkpoints
from trainer.evaluate import evaluate_model
from trainer.load import load_weights, resolve
from wsm.cli import main
from wsm.store import Store


def test_a_torch_dist_merge_in_the_store_evaluates_and_exports(
    tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A copy of the session's store: the checkpoints added here must not change what other tests see.
    shutil.copytree(tiny_run.store.url, tmp_path / "store")
    tiny_run = dataclasses.replace(tiny_run, store=Store(str(tmp_path / "store"), settings=make_settings()))
    first, later = _more_checkpoints(tiny_run)
    argv = [
        "merge",
        "--run",
        tiny_run.run,
        "--store",
        tiny_run.store.url,
        "--window",
        str(2 * (later - first)),
    ]
    assert main([*argv, "--curve", "linear", "--out-format", "torch_dist", "--json", "--no-progress"]) == 0
    output = json.loads(capsys.readouterr().out)["output"]
    [model] = [m for m in tiny_run.store.list_models(tiny_run.run) if output.endswith(m.dir)]
    assert any(f.name.endswith("/.metadata") for f in model.files)  # Megatron's layout, not safetensors
    sm = resolve(tiny_run.store, tiny_run.run, model.dir)
    merged = load_weights(tiny_run.store, sm.manifest)
    ckpt = tiny_run.store.get_checkpoint(tiny_run.run, first)
    source = load_weights(tiny_run.store, ckpt)
    assert merged.keys() == source.keys()
    for name, tensor in merged.items():  # copies of one checkpoint average to that checkpoint
        torch.testing.assert_close(tensor, source[name])
    config = fast_eval_config(run_sft=False, sharpness={"enabled": False})
    ours = evaluate_model(tiny_run.store, tiny_run.run, model.dir, config)
    theirs = evaluate_model(tiny_run.store, tiny_run.run, ckpt.dir, config)
    assert ours.metrics["pretrain_val_loss"] == pytest.approx(theirs.metrics["pretrain_val_loss"], rel=1e-5)
    assert main(["export", model.dir, "--hf", str(tmp_path / "hf"), "--store", tiny_run.store.url]) == 0
