"""Reading wsm checkpoints in Megatron's ``torch_dist`` layout back.

Two roads, for two needs:

* **Resume** (:func:`resume_from`) goes through megatron-core's ``dist_checkpointing.load`` with
  this process's sharded state dict, so megatron reshards: a run saved at TP=2 × DP=2 continues
  at TP=1 or DP=4. On a local store megatron reads the checkpoint in place; otherwise rank 0
  downloads its DCP directory (every file checked against the manifest) into the scratch
  directory, which all ranks must see (``checkpoint.scratch_dir`` on shared storage when nodes
  differ).
* **Weights** for evaluation, export and tests (:func:`read_weights`) go through the merger's
  DCP reader (``merger.store_io.checkpoint_ref``): only the model's chunks are read, by byte
  range, straight from the store, then assembled into full tensors under canonical names.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.dist_state import restore_rng, sharded_state_dict
from trainer.distributed import DistInfo, barrier, broadcast_object
from trainer.weights import from_dist_names
from wsm.store import CheckpointManifest, ModelManifest, Store, layout

log = logging.getLogger(__name__)


def dcp_dir(manifest: CheckpointManifest) -> str:
    """The ``iter_<N>`` directory of a checkpoint in Megatron's layout; ValueError for another layout."""
    found = layout.dcp_dir_of(f.name for f in manifest.files)
    if found is None:
        raise ValueError(f"{manifest.dir}: not a checkpoint in Megatron's torch_dist layout")
    return found


def read_weights(store: Store, manifest: CheckpointManifest | ModelManifest) -> dict[str, torch.Tensor]:
    """The model's full tensors (canonical names, CPU) of a ``torch_dist`` checkpoint (an external
    run's too, where it lies, once its identity is checked), or of a merge written in that layout,
    read by range."""
    from merger.store_io import checkpoint_ref

    return from_dist_names(read_layout_tensors(checkpoint_ref(store, manifest)))


def read_layout_tensors(ckpt: Any) -> dict[str, torch.Tensor]:
    """Every tensor of a :class:`merger.formats.CheckpointLayout`, assembled from its chunks."""
    from merger.formats.dtypes import DTYPES, tensor_view
    from merger.formats.sources import open_source

    sources = [open_source(f.uri, ckpt.storage_options, f.size) for f in ckpt.files]
    out: dict[str, torch.Tensor] = {}
    try:
        for name, entry in ckpt.tensors.items():
            full = torch.empty(entry.shape, dtype=DTYPES[entry.dtype][0])
            for c in entry.chunks:
                data = tensor_view(sources[c.file].read(c.byte_offset, c.nbytes), entry.dtype)
                region = full[tuple(slice(o, o + n) for o, n in zip(c.offsets, c.sizes, strict=True))]
                region.copy_(data.view(c.sizes))
            out[name] = full
    finally:
        for s in sources:
            s.close()
    return out


@contextlib.contextmanager
def local_checkpoint_dir(
    store: Store, manifest: CheckpointManifest, scratch_dir: str | None = None
) -> Iterator[str]:
    """The checkpoint's DCP directory on local disk, on every rank (collective)."""
    iter_dir = dcp_dir(manifest)
    files = [f.name for f in manifest.files if f.name.startswith(f"{iter_dir}/")]
    if store.is_local:
        yield str(Path(store.full_path(manifest.dir)) / iter_dir)
        return
    main = not dist.is_initialized() or dist.get_rank() == 0
    tmp: str | None = None
    try:
        if main:
            tmp = tempfile.mkdtemp(prefix="wsm-resume-", dir=scratch_dir)
            for name in files:
                target = Path(tmp, *name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                store.download(manifest, name, target)  # checked against the manifest
        path = broadcast_object(tmp)
        assert isinstance(path, str)
        yield str(Path(path) / iter_dir)
        barrier()  # every rank has read it
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def resume_from(
    model: torch.nn.Module,
    engine: Any,
    info: DistInfo,
    store: Store,
    manifest: CheckpointManifest,
    state: dict[str, Any],
    *,
    scratch_dir: str | None = None,
) -> None:
    """Load weights, optimizer state and (on the same layout) RNG state of a ``torch_dist`` checkpoint.

    Collective: every rank loads its own shards, resharded by megatron to this layout.
    """
    from megatron.core import dist_checkpointing

    saved_on = state.get("engine", "cpu")
    here = "gpu" if info.cuda else "cpu"
    if saved_on != here:
        raise ValueError(
            f"{manifest.dir} holds the {saved_on.upper()} engine's optimizer state; resume it on "
            f"{'CUDA' if saved_on == 'gpu' else 'the CPU'} (or branch a new run from its weights)"
        )
    same_layout = state.get("tensor_parallel") == info.tp_size and state.get("world_size") == info.world_size
    with local_checkpoint_dir(store, manifest, scratch_dir) as path:
        request = sharded_state_dict(model, engine, info, is_loading=True, with_rng=same_layout)
        loaded = dist_checkpointing.load(request, path)
    model.load_state_dict(loaded["model"])
    engine.load_sharded_optimizer_state(loaded["optimizer"], int(state["adam_step"]))
    if same_layout:
        restore_rng(loaded["rng_state"])
    else:
        log.info(
            "resharded from TP=%s × world %s to TP=%d × world %d (RNG state not restored)",
            state.get("tensor_parallel"),
            state.get("world_size"),
            info.tp_size,
            info.world_size,
        )
