"""Manifest schema (pydantic v2) of every artifact in the store; docs/STORE.md is its reference.

A manifest is the last file written for an artifact and the only proof that it is complete.
Readers ignore unknown fields (a newer writer may add some) but refuse a newer ``schema_version``.
Free-form configuration (model, tokenizer, data, schedule, curves) stays a JSON dict: its owner
(trainer, merger) defines the content, the store only carries it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

import wsm
from wsm.store import layout
from wsm.store.names import validate_file_name

SCHEMA_VERSION = 1
"""Bump when a field changes meaning or a required field is added; readers refuse newer versions."""

JsonDict = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class FileEntry(BaseModel):
    """One data file of an artifact: its name inside the artifact directory, size and sha256."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return validate_file_name(v, "file name")


class Manifest(BaseModel):
    """Fields common to every manifest."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    kind: str
    created_at: datetime = Field(default_factory=utcnow)
    code_version: str = Field(default_factory=lambda: wsm.__version__)
    files: list[FileEntry] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is newer than this wsm understands ({SCHEMA_VERSION})")
        return v

    @property
    def dir(self) -> str:
        """Store-relative directory of the artifact."""
        raise NotImplementedError

    def path(self, name: str) -> str:
        """Store-relative path of file ``name`` of this artifact (it must be listed in ``files``)."""
        self.file(name)
        return f"{self.dir}/{name}"

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise KeyError(f"{self.dir}: no file {name!r} in manifest")

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class RunManifest(Manifest):
    """``runs/<run>/manifest.json``: a pre-training run and its (trainer-defined) configuration."""

    kind: Literal["run"] = "run"
    run: str
    model: JsonDict = Field(default_factory=dict)
    tokenizer: JsonDict = Field(default_factory=dict)
    data: JsonDict = Field(default_factory=dict)
    schedule: JsonDict = Field(default_factory=dict)
    description: str = ""
    extra: JsonDict = Field(default_factory=dict)

    @property
    def dir(self) -> str:
        return layout.run_dir(self.run)


class CheckpointManifest(Manifest):
    """``runs/<run>/checkpoints/<tokens:018d>/manifest.json``: weights + opaque training state."""

    kind: Literal["checkpoint"] = "checkpoint"
    run: str
    tokens: int = Field(ge=0)
    step: int | None = None
    extra: JsonDict = Field(default_factory=dict)
    """Trainer-defined: LR, loss, optimizer settings at save time, ..."""

    @property
    def dir(self) -> str:
        return layout.checkpoint_dir(self.run, self.tokens)


class SourceCheckpoint(BaseModel):
    """One checkpoint merged into an annealed model, with its merge coefficient."""

    model_config = ConfigDict(extra="ignore")

    tokens: int = Field(ge=0)
    sha256: str
    """sha256 of the checkpoint's weights file, copied from its manifest."""
    c: float
    """Coefficient of this checkpoint in the merge (WSM paper's c_i)."""
    w: float
    """Weight of this checkpoint as derived from the decay curve (WSM paper's w_i)."""


class Window(BaseModel):
    """The token range of checkpoints considered by a merge (inclusive)."""

    model_config = ConfigDict(extra="ignore")

    start_tokens: int = Field(ge=0)
    end_tokens: int = Field(ge=0)


ModelKind = Literal["anneal", "baseline"]


class ModelManifest(Manifest):
    """``runs/<run>/models/<name>/manifest.json``: an annealed (merged) or baseline (real decay) model.

    Weights are ``model.safetensors`` or HF-style shards plus ``model.safetensors.index.json``.
    """

    KINDS: ClassVar[tuple[str, ...]] = ("anneal", "baseline")

    kind: ModelKind
    run: str
    name: str
    tokens: int = Field(ge=0)
    """Training tokens the model stands for (anneal: end of the window; baseline: end of decay)."""
    dtype: str
    curve: JsonDict | None = None
    """anneal: the decay curve the merge weights were derived from (merger-defined)."""
    window: Window | None = None
    sources: list[SourceCheckpoint] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    """Seconds per phase, e.g. ``{"read": .., "merge": .., "write": ..}``."""
    bytes_read: int = Field(default=0, ge=0)
    branch_tokens: int | None = None
    """baseline: the checkpoint the real-decay branch started from."""
    config: JsonDict = Field(default_factory=dict)
    """Producer-defined configuration (merge options, baseline decay schedule, ...)."""
    extra: JsonDict = Field(default_factory=dict)

    @property
    def dir(self) -> str:
        return layout.model_dir(self.run, self.name)

    @property
    def is_sharded(self) -> bool:
        return any(f.name == layout.MODEL_INDEX_FILE for f in self.files)

    @property
    def weight_files(self) -> list[str]:
        return sorted(f.name for f in self.files if f.name.endswith(".safetensors"))


class EvalManifest(Manifest):
    """``runs/<run>/evals/<name>/manifest.json``: an evaluation of a model or checkpoint."""

    kind: Literal["eval"] = "eval"
    run: str
    name: str
    model_id: str
    """Store-relative directory of what was evaluated, e.g. ``runs/r1/models/anneal-80B``."""
    config: JsonDict = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    duration_s: float = Field(default=0.0, ge=0)
    extra: JsonDict = Field(default_factory=dict)

    @property
    def dir(self) -> str:
        return layout.eval_dir(self.run, self.name)


class PinManifest(Manifest):
    """``runs/<run>/pins/<job_id>.json``: checkpoints a queued/running job needs; retention keeps them."""

    kind: Literal["pin"] = "pin"
    run: str
    job_id: str
    tokens: list[int] = Field(default_factory=list)
    expires_at: datetime | None = None
    """Optional safety net for crashed jobs: an expired pin no longer protects anything."""

    @property
    def dir(self) -> str:
        return layout.pins_dir(self.run)

    def active(self, now: datetime | None = None) -> bool:
        return self.expires_at is None or self.expires_at > (now or utcnow())


ArtifactManifest = CheckpointManifest | ModelManifest | EvalManifest
