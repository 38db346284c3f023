"""Decay branches: the real-decay baseline a merge over the same window claims to equal.

Fork run R at one of its checkpoints (step S), train W more steps on exactly the batches R saw
(same corpus, seed and sample horizon, batches addressed by step) with a WSD decay over those W
steps, and publish the result as R's model ``kind="baseline"`` with ``branch_tokens`` = S's tokens
and ``window`` = [S, S+W] in tokens. Run R itself is not touched: no checkpoints, no metrics.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from trainer.config import TrainConfig
from trainer.load import get_run
from trainer.loop import Trainer, TrainResult
from trainer.runinfo import TOKENIZER_FILE, tokenizer_store_path
from trainer.schedule import decay_branch_schedule, resolve_schedule
from trainer.units import format_tokens, parse_tokens, tokens_to_steps
from wsm.store import ArtifactExistsError, ArtifactNotFoundError, ModelManifest, Store, layout, open_store

log = logging.getLogger(__name__)


@dataclass
class BranchResult:
    """The published baseline (rank 0) and the training trace of the branch."""

    manifest: ModelManifest | None
    train: TrainResult


def run_config(store: Store, run: str) -> TrainConfig:
    """The TrainConfig a stored run was started with."""
    manifest = get_run(store, run)
    stored = manifest.schedule.get("config")
    if not isinstance(stored, dict):
        raise ValueError(f"run {run!r} has no trainer config in its manifest (not written by wsm train?)")
    return TrainConfig.model_validate(stored)


def branch_name(curve: str, fork_tokens: int, window_tokens: int) -> str:
    return f"baseline-{curve}-{format_tokens(fork_tokens)}-{format_tokens(window_tokens)}".replace(" ", "")


def _taken(run: str, name: str) -> ValueError:
    return ValueError(
        f"run {run!r} already has a model named {name!r}: pass --overwrite to replace it, "
        "or --name to choose another name"
    )


@contextlib.contextmanager
def _named_collision(run: str, name: str) -> Iterator[None]:
    """The store's collision error as the command's flags (another branch may have published first)."""
    try:
        yield
    except ArtifactExistsError:
        raise _taken(run, name) from None


def _logged_losses(result: TrainResult, log_every: int) -> dict[str, list[Any]]:
    """The branch's training losses with the optimizer step of each (the loop logs every
    ``log_every`` steps and at the last), so its loss curve can be drawn from the fork point.

    ``lrs`` has one value per step from ``start_step + 1``; losses only at logged steps. If the
    count does not add up (a stop signal logged an extra step), the losses are left out rather
    than drawn at the wrong places.
    """
    steps = [
        s for s in range(result.start_step + 1, result.step + 1) if s % log_every == 0 or s == result.step
    ]
    if len(steps) != len(result.losses):
        return {}
    return {"loss_steps": steps, "losses": result.losses}


def decay_branch(
    run: str,
    *,
    fork: str | int,
    window: str | int,
    curve: str = "1-sqrt",
    min_lr_factor: float = 0.0,
    name: str | None = None,
    store: Store | None = None,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> BranchResult:
    """Train the decay branch of ``run`` from checkpoint ``fork`` over ``window`` tokens and publish it."""
    store = store or open_store()
    cfg = run_config(store, run)
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    tps = cfg.tokens_per_step
    fork_tokens = parse_tokens(fork, name="--from")
    try:
        start = store.get_checkpoint(run, fork_tokens)
    except ArtifactNotFoundError:
        have = ", ".join(format_tokens(c.tokens) for c in store.list_checkpoints(run)) or "none"
        raise ValueError(f"run {run!r} has no checkpoint at {fork_tokens} tokens (have: {have})") from None
    fork_step = fork_tokens // tps
    window_steps = tokens_to_steps(parse_tokens(window, name="--window"), tps)
    if not overwrite:
        # Refuse before training rather than after: the window's steps would be lost.
        expected = name or branch_name(curve, fork_tokens, (fork_step + window_steps) * tps - fork_tokens)
        if any(m.name == expected for m in store.list_models(run)):
            raise _taken(run, expected)
    spec = decay_branch_schedule(
        resolve_schedule(cfg),
        fork_step=fork_step,
        window_steps=window_steps,
        curve=curve,
        min_lr_factor=min_lr_factor,
    )
    log.info(
        "decay branch of %s: from %s tokens (step %d), %d steps of %s decay",
        run,
        format_tokens(fork_tokens),
        fork_step,
        window_steps,
        curve,
    )
    trainer = Trainer(
        cfg,
        store=store,
        schedule=spec,
        save_checkpoints=False,
        start_from=start,
        stop_step=fork_step + window_steps,
    )
    result = trainer.train()
    val = trainer.validation_loss()
    snap = trainer.snapshot()
    if snap is None:
        return BranchResult(None, result)
    end_tokens = trainer.step * tps
    model_name = name or branch_name(curve, fork_tokens, end_tokens - fork_tokens)
    with tempfile.TemporaryDirectory(prefix="wsm-branch-") as tmp:
        weights = Path(tmp) / layout.MODEL_FILE
        save_file(snap.weights, str(weights), metadata={"format": "pt"})
        tok = Path(tmp) / TOKENIZER_FILE
        tok.write_bytes(store.read_bytes(tokenizer_store_path(run)))
        dtype = str(next(iter(snap.weights.values())).dtype).replace("torch.", "")
        with (
            _named_collision(run, model_name),
            store.publish_model(
                run,
                model_name,
                kind="baseline",
                tokens=end_tokens,
                dtype=dtype,
                overwrite=overwrite,
                branch_tokens=fork_tokens,
                window={"start_tokens": fork_tokens, "end_tokens": end_tokens},
                curve={"name": curve, "min_lr_factor": min_lr_factor},
                config={
                    "schedule": spec.to_json(),
                    "fork_step": fork_step,
                    "window_steps": window_steps,
                    "tokens_per_step": tps,
                },
                extra={
                    "lrs": result.lrs,
                    **_logged_losses(result, cfg.log_every),
                    "final_loss": result.losses[-1] if result.losses else None,
                    "val_loss": val,
                },
            ) as pub,
        ):
            pub.put_file(layout.MODEL_FILE, weights)
            pub.put_file(TOKENIZER_FILE, tok)
    log.info(
        "published baseline %s/%s (%s tokens, val loss %s)", run, model_name, format_tokens(end_tokens), val
    )
    return BranchResult(pub.manifest, result)
