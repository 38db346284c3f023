"""`wsm merge --run ... --mergekit-yaml`: a config mergekit runs as is, over HF exports of the checkpoints."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.trainer.sft.conftest import TinyRun, fast_eval_config
from trainer.eval_cli import parse_model_spec
from trainer.evaluate import evaluate_model
from wsm.cli import main
from wsm.store import layout

_LOSS_ONLY = fast_eval_config(run_sft=False, sharpness={"enabled": False})


def _more_checkpoints(tiny_run: TinyRun) -> tuple[int, int]:
    """The trained checkpoint again at two later token counts: a window needs two in (S, E]."""
    store, run = tiny_run.store, tiny_run.run
    first = store.list_checkpoints(run)[0]
    for k in (2, 3):
        if first.tokens * k not in {c.tokens for c in store.list_checkpoints(run)}:
            with store.publish_checkpoint(run, first.tokens * k, step=(first.step or 0) * k) as pub:
                trees = {f.name.split("/", 1)[0] for f in first.files if "/" in f.name}
                for tree in sorted(trees):  # a format's directory tree (Megatron's iter_<N>/)
                    pub.put_tree(store.full_path(f"{first.dir}/{tree}"), tree)
                for f in first.files:
                    if "/" not in f.name:
                        path = store.local_path(first.path(f.name))
                        assert path is not None
                        pub.put_file(f.name, path)
    return first.tokens * 2, first.tokens * 3


def test_mergekit_yaml_for_a_store_run(tiny_run: TinyRun, tmp_path: Path) -> None:
    first, later = _more_checkpoints(tiny_run)
    cfg_path = tmp_path / "anneal.yaml"
    window = str(2 * (later - first))
    argv = ["merge", "--run", tiny_run.run, "--store", tiny_run.store.url, "--window", window]
    assert main([*argv, "--curve", "linear", "--mergekit-yaml", str(cfg_path), "--dry-run"]) == 0
    cfg = yaml.safe_load(cfg_path.read_text())
    paths = [m["model"] for m in cfg["models"]]
    assert paths == [str(tmp_path / "anneal-models" / str(t)) for t in (first, later)]
    assert all(Path(p).is_absolute() and (Path(p) / "config.json").is_file() for p in paths)
    assert [m["parameters"]["weight"] for m in cfg["models"]] == [0.5, 0.5]
    transformers = pytest.importorskip("transformers")
    transformers.AutoModelForCausalLM.from_pretrained(paths[0])  # each one loads as an HF model

    beside = Path(sys.executable).with_name("mergekit-yaml")
    tool = str(beside) if beside.is_file() else shutil.which("mergekit-yaml")
    if tool is None:
        pytest.skip("mergekit is not installed (pip install 'wsm[bench]')")
    out = tmp_path / "mergekit-out"
    done = subprocess.run([tool, str(cfg_path), str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    merged = {k: v for f in out.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    a, b = (load_file(str(Path(p) / "model.safetensors")) for p in paths)
    for name, value in merged.items():
        torch.testing.assert_close(value.float(), 0.5 * a[name].float() + 0.5 * b[name].float())
    assert layout.MODEL_FILE  # the store layout is untouched by the export

    # The merge is evaluated like any model of the run, which mergekit's copy of the config names.
    ckpt = tiny_run.store.get_checkpoint(tiny_run.run, first)
    expected = evaluate_model(tiny_run.store, tiny_run.run, ckpt.dir, _LOSS_ONLY)
    assert parse_model_spec(tiny_run.store, str(out)) == (tiny_run.run, f"hf:{out}")
    record = evaluate_model(tiny_run.store, tiny_run.run, f"hf:{out}", _LOSS_ONLY)
    # The checkpoints are copies of one another, so their average is that checkpoint (in mergekit's dtype).
    assert record.metrics["pretrain_val_loss"] == pytest.approx(
        expected.metrics["pretrain_val_loss"], rel=1e-3
    )
