"""What the run manifest records (model, tokenizer, data, schedule) and the resume compatibility check.

A run keeps its name for life: starting it again resumes, so the stored description must match the
new config in everything that changes the weights' trajectory. ``train_tokens`` of a WSO run is
only a stop condition and may change between restarts.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from trainer.config import ModelConfig, TrainConfig
from trainer.data import PreparedData
from trainer.schedule import ScheduleSpec
from wsm.store import ArtifactNotFoundError, RunManifest, Store, layout

log = logging.getLogger(__name__)

TOKENIZER_FILE = layout.TOKENIZER_FILE


def tokenizer_store_path(run: str) -> str:
    """Where a run's ``tokenizer.json`` lives in the store (next to its manifest)."""
    return f"runs/{run}/{TOKENIZER_FILE}"


def describe_run(
    cfg: TrainConfig, prepared: PreparedData, spec: ScheduleSpec, padded_vocab: int
) -> dict[str, dict[str, Any]]:
    """The four free-form sections of the RunManifest."""
    tok_bytes = Path(prepared.tokenizer_path).read_bytes()
    return {
        "model": {**cfg.model.model_dump(), "padded_vocab_size": padded_vocab, "arch": "megatron-gpt-llama"},
        "tokenizer": {
            "file": tokenizer_store_path(cfg.run),
            "sha256": hashlib.sha256(tok_bytes).hexdigest(),
            "vocab_size": prepared.vocab_size,
            "eod": prepared.eod,
        },
        "data": {
            "paths": cfg.data.paths,
            "builtin_max_bytes": cfg.data.builtin_max_bytes,
            "fingerprint": prepared.fingerprint,
            "num_documents": prepared.num_documents,
            "num_tokens": prepared.num_tokens,
            "valid_fraction": cfg.data.valid_fraction,
            "seq_length": cfg.model.seq_length,
            "seed": cfg.seed,
            "global_batch_size": cfg.global_batch_size,
            "tokens_per_step": cfg.tokens_per_step,
        },
        "schedule": {
            **spec.to_json(),
            "optim": cfg.optim.model_dump(),
            "train_tokens": cfg.train_tokens,
            "config": cfg.model_dump(mode="json"),
        },
    }


def _diff(old: dict[str, Any], new: dict[str, Any], section: str, ignore: set[str]) -> list[str]:
    keys = (set(old) | set(new)) - ignore
    return [
        f"{section}.{k}: stored {old.get(k)!r}, now {new.get(k)!r}"
        for k in sorted(keys)
        if old.get(k) != new.get(k)
    ]


def check_compatible(stored: RunManifest, desc: dict[str, dict[str, Any]]) -> None:
    """Refuse to resume a run whose stored description differs from the new config in substance."""
    problems = _diff(stored.model, desc["model"], "model", {"preset"})
    problems += _diff(stored.tokenizer, desc["tokenizer"], "tokenizer", set())
    problems += _diff(stored.data, desc["data"], "data", {"paths", "builtin_max_bytes", "num_documents"})
    ignore = {"config", "train_tokens"} if desc["schedule"].get("style") == "wso" else {"config"}
    problems += _diff(stored.schedule, desc["schedule"], "schedule", ignore)
    if problems:
        raise ValueError(
            f"run {stored.run!r} exists with a different configuration (use a new run name):\n  "
            + "\n  ".join(problems)
        )


def ensure_run(
    store: Store, cfg: TrainConfig, prepared: PreparedData, desc: dict[str, dict[str, Any]]
) -> RunManifest:
    """Create the run (tokenizer first, manifest last) or check the existing one matches."""
    try:
        stored = store.get_run(cfg.run)
    except ArtifactNotFoundError:
        stored = None
    if stored is not None:
        check_compatible(stored, desc)
        return stored
    store.put_file(prepared.tokenizer_path, tokenizer_store_path(cfg.run))
    return store.create_run(
        cfg.run,
        model=desc["model"],
        tokenizer=desc["tokenizer"],
        data=desc["data"],
        schedule=desc["schedule"],
        description=f"wsm trainer: {cfg.model.preset or 'custom'} model, {cfg.schedule.style} schedule",
    )


def run_model_config(manifest: RunManifest) -> tuple[ModelConfig, int]:
    """The model shape and padded vocabulary of a stored run (to rebuild its model)."""
    fields = {k: v for k, v in manifest.model.items() if k in ModelConfig.model_fields}
    fields["preset"] = None
    return ModelConfig.model_validate(fields), int(manifest.model["padded_vocab_size"])
