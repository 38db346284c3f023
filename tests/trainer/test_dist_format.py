"""Checkpoints in Megatron's torch_dist format: readable by megatron-core alone, by wsm's readers
(evaluation, merging), and resumable across formats."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import tiny_overrides
from trainer.checkpoint import load_checkpoint
from trainer.config import load_config
from trainer.loop import Trainer

# Only torch and megatron-core: the checkpoint directory must be all Megatron needs.
MEGATRON_ONLY = textwrap.dedent(
    """
    import json, sys, tempfile
    import torch
    import torch.distributed as dist
    from megatron.core import dist_checkpointing, parallel_state

    ckpt, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1)
    common = dist_checkpointing.load_common_state_dict(ckpt)
    tensors = dist_checkpointing.load_plain_tensors(ckpt)  # dist_checkpointing.load of every tensor
    torch.save({k: v for k, v in tensors.items() if not k.startswith("optimizer.")}, out)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("wsm", "trainer", "merger"))
    args = common["args"]
    print(json.dumps({
        "iteration": common["iteration"],
        "args": {k: getattr(args, k) for k in ("global_batch_size", "seq_length", "num_layers",
                                               "hidden_size", "num_query_groups", "padded_vocab_size",
                                               "tensor_model_parallel_size", "ckpt_format")},
        "optimizer_keys": sum(k.startswith("optimizer.state.exp_avg") for k in tensors),
        "leaked": leaked,
    }))
    """
)


def make(cache: Path, store: Any, run: str, **extra: Any) -> Trainer:
    return Trainer(load_config(None, tiny_overrides(cache, run=run, **extra)), store=store)


@pytest.fixture(scope="module")
def dist_run(data_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 20-step run with torch_dist checkpoints at 2560 and 5120 tokens."""
    from wsm.store import Store

    store = Store(str(tmp_path_factory.mktemp("dist-store")))
    make(data_cache, store, "d", train_tokens=5120).train()
    return store


def test_megatron_alone_loads_a_wsm_checkpoint(dist_run: Any, tmp_path: Path) -> None:
    store = dist_run
    manifest = store.get_checkpoint("d", 5120)
    iter_dir = Path(store.full_path(manifest.dir)) / "iter_0000020"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", MEGATRON_ONLY, str(iter_dir), str(tmp_path / "t.pt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["leaked"] == []
    assert seen["iteration"] == 20
    assert seen["args"] == {
        "global_batch_size": 4,
        "seq_length": 64,
        "num_layers": 2,
        "hidden_size": 64,
        "num_query_groups": 2,
        "padded_vocab_size": 512,
        "tensor_model_parallel_size": 1,
        "ckpt_format": "torch_dist",
    }
    assert seen["optimizer_keys"] > 0  # the AdamW moments are in megatron's optimizer namespace
    megatron = torch.load(tmp_path / "t.pt", weights_only=True)
    ours = load_checkpoint(store, manifest, with_state=False).weights
    qkv = megatron["decoder.layers.self_attention.linear_qkv.weight"]
    assert qkv.shape[0] == 2  # layers stacked, as Megatron-LM stores them
    assert torch.equal(qkv[1], ours["decoder.layers.1.self_attention.linear_qkv.weight"])
    assert torch.equal(
        megatron["decoder.layers.mlp.linear_fc1.layer_norm_weight"][0],
        ours["decoder.layers.0.pre_mlp_layernorm.weight"],
    )
    assert torch.equal(megatron["output_layer.weight"], ours["output_layer.weight"])
    # The merger's reader (no megatron import) finds the tokens in common.pt's arguments.
    from merger.formats.dcp import open_dcp
    from merger.formats.dcp_runs import discover, megatron_tokens

    assert megatron_tokens(open_dcp(str(iter_dir))) == 5120
    assert [c.step for c in discover(store.full_path(manifest.dir))] == [20]


def test_legacy_checkpoints_resume_into_the_new_format(
    data_cache: Path, dist_run: Any, local_store: Any
) -> None:
    """A run written in the old layout keeps working: read, resumed, continued in torch_dist, exactly."""
    make(data_cache, local_store, "d", train_tokens=2560, **{"checkpoint.format": "safetensors"}).train()
    old = local_store.get_checkpoint("d", 2560)
    assert "model.safetensors" in {f.name for f in old.files}
    resumed = make(data_cache, local_store, "d", train_tokens=5120)
    assert resumed.step == 10
    resumed.train()
    new = local_store.get_checkpoint("d", 5120)
    assert "iter_0000020/.metadata" in {f.name for f in new.files}
    for tokens in (2560, 5120):
        a = load_checkpoint(dist_run, dist_run.get_checkpoint("d", tokens), with_state=False).weights
        b = load_checkpoint(local_store, local_store.get_checkpoint("d", tokens), with_state=False).weights
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), tokens


def test_merge_and_evaluation_read_the_new_format(dist_run: Any) -> None:
    from merger.store_io import plan_selection, publish_merge, select, weight_files, weights_sha256
    from theory import CurveSpec
    from trainer.load import load_run_model, load_weights, resolve

    store = dist_run
    ckpt = store.get_checkpoint("d", 5120)
    main, files = weight_files(ckpt)
    assert main == "iter_0000020" and "iter_0000020/.metadata" in files
    assert weights_sha256(ckpt) == weights_sha256(store.get_checkpoint("d", 5120))
    selection = select(store, "d", CurveSpec(name="linear"), 5120, count=2)
    assert selection.tokens == [2560, 5120]
    model, _ = publish_merge(store, plan_selection(store, selection))
    merged = load_weights(store, model)  # megatron's stacked names mapped back
    a, b = (
        load_checkpoint(store, store.get_checkpoint("d", t), with_state=False).weights for t in (2560, 5120)
    )
    assert merged.keys() == a.keys()
    for name, got in merged.items():
        want = selection.weights[0] * a[name].double() + selection.weights[1] * b[name].double()
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    gpt = load_run_model(store, "d", model=model.name)  # what evaluation and export build on
    first = "decoder.layers.0.self_attention.linear_qkv.weight"
    assert torch.equal(dict(gpt.named_parameters())[first].detach(), merged[first])
    assert resolve(store, "d", ckpt.dir).weight_sha256 == [
        f.sha256 for f in sorted(ckpt.files, key=lambda f: f.name) if f.name.startswith("iter_0000020/")
    ]


def test_an_object_store_run_resumes_from_a_downloaded_checkpoint(
    data_cache: Path, dist_run: Any, memory_store: Any, tmp_path: Path
) -> None:
    """Off a local disk the ranks write into the scratch dir, the publish copies (no links), and a
    resume reads a verified download: the run continues exactly as the local one."""
    scratch = {"checkpoint.scratch_dir": str(tmp_path)}
    make(data_cache, memory_store, "d", train_tokens=2560, **scratch).train()
    resumed = make(data_cache, memory_store, "d", train_tokens=5120, **scratch)
    assert resumed.step == 10
    resumed.train()
    assert list(tmp_path.iterdir()) == []  # scratch and download dirs are gone
    a = load_checkpoint(dist_run, dist_run.get_checkpoint("d", 5120), with_state=False).weights
    b = load_checkpoint(memory_store, memory_store.get_checkpoint("d", 5120), with_state=False).weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
