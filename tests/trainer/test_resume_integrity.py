"""Resume, evaluation and export read only verified checkpoints: a flipped byte is refused, naming where."""

from __future__ import annotations

import pytest
import torch

from trainer.checkpoint import OPTIM_FILE, Snapshot, load_checkpoint, write_checkpoint
from trainer.load import load_weights
from wsm.store import CheckpointManifest, IntegrityError, Store, layout

BLOCK = 4096


def _checkpoint(store: Store) -> CheckpointManifest:
    store.checksum_block_size = BLOCK
    g = torch.Generator().manual_seed(0)
    weights = {
        "embedding.weight": torch.randn(64, 32, generator=g),
        "out.weight": torch.randn(32, 32, generator=g),
    }
    optim = {f"exp_avg/{k}": torch.zeros_like(v) for k, v in weights.items()}
    snap = Snapshot(tokens=1000, step=10, weights=weights, optim=optim, state={"step": 10, "tokens": 1000})
    return write_checkpoint(store, "r1", snap)


def _flip(store: Store, path: str, offset: int) -> None:
    raw = bytearray(store.fs.cat_file(store.full_path(path)))
    raw[offset] ^= 0x01
    store.fs.pipe_file(store.full_path(path), bytes(raw))


@pytest.mark.parametrize("name", [layout.MODEL_FILE, OPTIM_FILE])
def test_resume_from_a_flipped_checkpoint_is_refused(store: Store, name: str) -> None:
    manifest = _checkpoint(store)
    loaded = load_checkpoint(store, manifest)
    assert loaded.state["step"] == 10 and set(loaded.optim) == {
        "exp_avg/embedding.weight",
        "exp_avg/out.weight",
    }
    size = manifest.file(name).size
    _flip(store, manifest.path(name), size - 100)  # in the tensor data: safetensors would load it
    with pytest.raises(IntegrityError) as e:
        load_checkpoint(store, manifest)
    start = (size - 100) // BLOCK * BLOCK
    assert e.value.path == manifest.path(name) and e.value.byte_range == (start, min(size, start + BLOCK))


def test_evaluation_and_export_weights_are_verified(store: Store) -> None:
    manifest = _checkpoint(store)
    assert set(load_weights(store, manifest)) == {"embedding.weight", "out.weight"}
    _flip(store, manifest.path(layout.MODEL_FILE), 5000)
    with pytest.raises(IntegrityError, match=f"{manifest.path(layout.MODEL_FILE)} at bytes 4096-8191"):
        load_weights(store, manifest)
