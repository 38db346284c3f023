"""Checkpoints to the store without stalling training, and exact resume from them.

Two layouts, both published by :class:`AsyncSaver` on rank 0 (one save in flight, retries, the
store's manifest last):

* ``torch_dist`` (the default, ``checkpoint.format``): Megatron-LM's layout written by every rank
  through megatron-core's ``dist_checkpointing`` (:mod:`trainer.dist_save`, :mod:`trainer.dist_state`):
  ``latest_checkpointed_iteration.txt``, ``iter_<step:07d>/`` (``.metadata``, ``__<rank>_<i>.distcp``,
  ``common.pt``, ``metadata.json``) and ``train_state.json``. Nothing is gathered; resume reshards.
* ``safetensors`` (legacy, still read): on the training thread gather TP shards and copy every
  tensor to CPU (the *stall*), then in the background write ``model.safetensors`` (full canonical
  weights), ``train_state.safetensors`` (AdamW moments as full tensors, RNG) and
  ``train_state.json``. The GPU path with megatron's optimizer stores its own per-rank state
  (``train_state.pt``), so resuming that needs the same parallel layout.

A failed upload is retried with backoff; when retries run out the error is raised on the training
thread at its next step, so training stops loudly instead of silently skipping a checkpoint.
:func:`load_checkpoint` reads either layout back (weights as full canonical tensors).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from trainer.weights import full_state_dict, load_full_state_dict, named_parameters
from wsm.store import ArtifactExistsError, CheckpointManifest, Store, layout

log = logging.getLogger(__name__)

WEIGHTS_FILE = layout.MODEL_FILE
OPTIM_FILE = "train_state.safetensors"
STATE_FILE = "train_state.json"
MEGATRON_OPTIM_FILE = "train_state.pt"
# Test hook "SECONDS[:MIN_TOKENS]": sleep inside the publish of checkpoints at or after MIN_TOKENS,
# so a test can SIGKILL the process in the middle of a save.
_UPLOAD_DELAY_ENV = "WSM_TRAINER_TEST_UPLOAD_DELAY"


def upload_delay_for_tests(tokens: int) -> float:
    raw = os.environ.get(_UPLOAD_DELAY_ENV, "")
    if not raw:
        return 0.0
    seconds, _, min_tokens = raw.partition(":")
    return float(seconds) if tokens >= int(min_tokens or 0) else 0.0


class CheckpointError(RuntimeError):
    """A checkpoint could not be written after all retries; training must not go on without it."""


class SaveJob(Protocol):
    """One checkpoint for :class:`AsyncSaver` to publish: everything it needs is already written
    or copied, so training may go on."""

    tokens: int
    metrics: list[dict[str, Any]]
    """Metric records to publish once this checkpoint is safe (not part of the checkpoint)."""

    def write(self, store: Store, run: str) -> CheckpointManifest:
        """Publish the checkpoint (the store's manifest last); may be retried."""
        ...

    def close(self) -> None:
        """Drop what the job holds (scratch files) once it is published or given up."""
        ...


@dataclass
class Snapshot:
    """Everything one checkpoint of the legacy layout holds, already on CPU and detached from training."""

    tokens: int
    step: int
    weights: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    megatron_optim: Any = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Metric records to publish once this checkpoint is safe (not part of the checkpoint)."""

    def write(self, store: Store, run: str) -> CheckpointManifest:
        return write_checkpoint(store, run, self)

    def close(self) -> None:
        return None


def snapshot_weights(model: torch.nn.Module, *, tp_group: Any, tp_size: int) -> dict[str, torch.Tensor]:
    """Full CPU copies of the weights under canonical names (collective over TP)."""
    return full_state_dict(model, group=tp_group, tp_size=tp_size)


def snapshot_adamw(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, *, tp_group: Any, tp_size: int
) -> dict[str, torch.Tensor]:
    """AdamW moments as full tensors keyed ``exp_avg/<name>`` and ``exp_avg_sq/<name>``."""
    state = optimizer.state

    def moments(name: str, p: torch.nn.Parameter) -> list[tuple[str, torch.Tensor]]:
        st = state.get(p)
        if not st:
            return []
        return [(f"exp_avg/{name}", st["exp_avg"]), (f"exp_avg_sq/{name}", st["exp_avg_sq"])]

    out = full_state_dict(model, group=tp_group, tp_size=tp_size, tensors=moments)
    out["rng/torch"] = torch.get_rng_state().clone()
    return out


def restore_adamw(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    adam_step: int,
    *,
    tp_rank: int,
    tp_size: int,
) -> None:
    """Put stored moments back into AdamW's per-parameter state (this rank's shards)."""
    from trainer.weights import shard_tensor

    for name, p in named_parameters(model).items():
        key = f"exp_avg/{name}"
        if key not in tensors:
            raise ValueError(f"training state has no optimizer moments for {name}")
        optimizer.state[p] = {
            # Same dtype/device AdamW itself uses for its step counter on CPU.
            "step": torch.tensor(float(adam_step), dtype=torch.float32),
            "exp_avg": shard_tensor(tensors[key], p, name, tp_rank, tp_size).to(p.device, p.dtype).clone(),
            "exp_avg_sq": shard_tensor(tensors[f"exp_avg_sq/{name}"], p, name, tp_rank, tp_size)
            .to(p.device, p.dtype)
            .clone(),
        }
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])


def write_checkpoint(store: Store, run: str, snap: Snapshot) -> CheckpointManifest:
    """Publish one checkpoint; the store writes the manifest last (atomic visibility)."""
    tmp = Path(tempfile.mkdtemp(prefix="wsm-ckpt-"))
    try:
        save_file(
            snap.weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "tokens": str(snap.tokens)}
        )
        if snap.optim:
            save_file(snap.optim, str(tmp / OPTIM_FILE))
        if snap.megatron_optim is not None:
            torch.save(snap.megatron_optim, tmp / MEGATRON_OPTIM_FILE)
        with store.publish_checkpoint(run, snap.tokens, step=snap.step, extra=snap.extra) as pub:
            pub.put_file(WEIGHTS_FILE, tmp / WEIGHTS_FILE)
            delay = upload_delay_for_tests(snap.tokens)
            if delay:
                time.sleep(delay)
            if snap.optim:
                pub.put_file(OPTIM_FILE, tmp / OPTIM_FILE)
            if snap.megatron_optim is not None:
                pub.put_file(MEGATRON_OPTIM_FILE, tmp / MEGATRON_OPTIM_FILE)
            pub.write_bytes(STATE_FILE, json.dumps(snap.state, indent=1, sort_keys=True).encode())
        assert pub.manifest is not None
        return pub.manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class AsyncSaver:
    """Background checkpoint writer: one save in flight, retries, loud failure."""

    def __init__(
        self,
        store: Store,
        run: str,
        *,
        retries: int = 3,
        backoff_s: float = 1.0,
        on_published: Callable[[CheckpointManifest, SaveJob], None] | None = None,
    ) -> None:
        self.store = store
        self.run = run
        self.retries = retries
        self.backoff_s = backoff_s
        self.on_published = on_published
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_published: CheckpointManifest | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> None:
        """Raise the background failure, if any, on the caller's (training) thread."""
        if self._error is not None:
            err, self._error = self._error, None
            raise CheckpointError(f"checkpoint upload failed after {self.retries} retries: {err}") from err

    def wait(self, timeout: float | None = None) -> float:
        """Block until the in-flight save is done; returns the seconds waited."""
        start = time.perf_counter()
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._thread = None
        return time.perf_counter() - start

    def submit(self, snap: SaveJob) -> float:
        """Start writing ``snap``; returns how long it waited for the previous save (part of the stall)."""
        waited = self.wait()
        self.check()
        self._thread = threading.Thread(
            target=self._run, args=(snap,), name=f"wsm-save-{snap.tokens}", daemon=True
        )
        self._thread.start()
        return waited

    def save_now(self, snap: SaveJob) -> CheckpointManifest:
        """Synchronous save (final checkpoint on exit, tests)."""
        self.wait()
        self.check()
        self._run(snap)
        self.check()
        assert self.last_published is not None
        return self.last_published

    def _run(self, snap: SaveJob) -> None:
        try:
            self._attempts(snap)
        finally:
            snap.close()

    def _attempts(self, snap: SaveJob) -> None:
        for attempt in range(self.retries + 1):
            try:
                start = time.perf_counter()
                manifest = snap.write(self.store, self.run)
            except ArtifactExistsError:
                # A previous attempt committed before failing (or another writer did): it is there.
                manifest = self.store.get_checkpoint(self.run, snap.tokens)
            except Exception as exc:
                if attempt == self.retries:
                    log.error("checkpoint at %d tokens failed for good: %s", snap.tokens, exc)
                    self._error = exc
                    return
                delay = self.backoff_s * 2**attempt
                log.warning(
                    "checkpoint at %d tokens failed (%s); retry %d/%d in %.0fs",
                    snap.tokens,
                    exc,
                    attempt + 1,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
                continue
            log.info("checkpoint %d tokens published in %.2fs", snap.tokens, time.perf_counter() - start)
            self.last_published = manifest
            if self.on_published is not None:
                try:
                    self.on_published(manifest, snap)
                except Exception:  # metrics are secondary; the checkpoint itself is safe
                    log.exception("post-checkpoint hook failed")
            return


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back from the store."""

    manifest: CheckpointManifest
    weights: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]
    state: dict[str, Any]
    megatron_optim: Any = None


def _local_file(store: Store, manifest: CheckpointManifest, name: str, tmp: Path) -> str:
    # Checked against the manifest's checksums as it streams: a corrupt checkpoint is never resumed.
    return store.verified_local_path(manifest, name, tmp)


def is_dist_checkpoint(manifest: CheckpointManifest) -> bool:
    """Whether a checkpoint is in Megatron's ``torch_dist`` layout (else the legacy safetensors one)."""
    return layout.dcp_dir_of(f.name for f in manifest.files) is not None


def read_train_state(store: Store, manifest: CheckpointManifest) -> dict[str, Any]:
    """``train_state.json``: step, tokens, Adam step, layout... (both layouts), checked on read."""
    if STATE_FILE not in {f.name for f in manifest.files}:
        raise ValueError(f"{manifest.dir} has no training state; it cannot be resumed")
    state: dict[str, Any] = json.loads(store.read_file(manifest, STATE_FILE))
    return state


def load_checkpoint(
    store: Store, manifest: CheckpointManifest, *, with_state: bool = True
) -> LoadedCheckpoint:
    """Read (and verify) a checkpoint's weights (full canonical tensors, either layout) and,
    optionally, its training state. The optimizer state of a ``torch_dist`` checkpoint is not read
    here: resuming loads it through megatron (:func:`trainer.dist_load.resume_from`)."""
    store.verify(manifest, full=False)
    names = {f.name for f in manifest.files}
    if is_dist_checkpoint(manifest):
        from trainer.dist_load import read_weights

        train_state = read_train_state(store, manifest) if with_state else {}
        return LoadedCheckpoint(manifest, read_weights(store, manifest), {}, train_state)
    with tempfile.TemporaryDirectory(prefix="wsm-load-") as tmpdir:
        tmp = Path(tmpdir)
        weights = load_file(_local_file(store, manifest, WEIGHTS_FILE, tmp), device="cpu")
        optim: dict[str, torch.Tensor] = {}
        state: dict[str, Any] = {}
        megatron_optim = None
        if with_state:
            state = read_train_state(store, manifest)
            if OPTIM_FILE in names:
                optim = load_file(_local_file(store, manifest, OPTIM_FILE, tmp), device="cpu")
            if MEGATRON_OPTIM_FILE in names:
                megatron_optim = torch.load(
                    _local_file(store, manifest, MEGATRON_OPTIM_FILE, tmp),
                    map_location="cpu",
                    weights_only=False,
                )
    return LoadedCheckpoint(manifest, weights, optim, state, megatron_optim)


def load_weights_into(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], *, tp_rank: int = 0, tp_size: int = 1
) -> None:
    """Strictly load full canonical weights into this rank's model shards."""
    load_full_state_dict(model, weights, tp_rank=tp_rank, tp_size=tp_size)
