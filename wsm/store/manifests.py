"""Manifest schema (pydantic v2) of every artifact in the store; docs/STORE.md is its reference.

A manifest is the last file written for an artifact and the only proof that it is complete.
Readers ignore unknown fields (a newer writer may add some) but refuse a newer ``schema_version``.
Free-form configuration (model, tokenizer, data, schedule, curves) stays a JSON dict: its owner
(trainer, merger) defines the content, the store only carries it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import wsm
from wsm.store import layout
from wsm.store.names import validate_tree_path

SCHEMA_VERSION = 2
"""Bump when a field changes meaning or a required field is added; readers refuse newer versions.

2: every data file carries fast checksums (``FileEntry.checksums``). Version 1 manifests still load
(their entries have ``checksums=None`` and are verified by sha256 where read whole)."""

DIGEST_PATTERN = r"^[0-9a-f]{16}$"

JsonDict = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Checksums(BaseModel):
    """Fast checksums of one file, computed while it was written: the whole file and fixed blocks.

    A reader of byte ranges verifies each block once it has all of it (wsm/store/checksums.py).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    algorithm: Literal["xxh3_64"] = "xxh3_64"
    """Hash function (the xxhash package's xxh3_64, 16 hex digits)."""
    xxh3: str = Field(pattern=DIGEST_PATTERN)
    """Digest of the whole file."""
    block_size: int = Field(gt=0)
    """Bytes per block; the last block may be shorter."""
    blocks: str = Field(pattern=r"^(?:[0-9a-f]{16})*$")
    """Digest of every block in file order, concatenated (16 hex digits each): compact in JSON."""

    @property
    def count(self) -> int:
        return len(self.blocks) // 16

    def block(self, index: int) -> str:
        return self.blocks[16 * index : 16 * index + 16]


class FileEntry(BaseModel):
    """One data file of an artifact: its name (a relative path for a format's directory tree) inside
    the artifact directory, size, sha256 and checksums."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Provenance digest (what a merged model's sources cite)."""
    checksums: Checksums | None = None
    """Fast checksums every verified read is checked against; None in schema_version 1 manifests."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return validate_tree_path(v, "file name")

    @model_validator(mode="after")
    def _blocks_cover_file(self) -> FileEntry:
        cs = self.checksums
        if cs is not None and cs.count != -(-self.size // cs.block_size):
            raise ValueError(
                f"file {self.name!r}: {cs.count} block checksums for {self.size} bytes in blocks of {cs.block_size}"
            )
        return self


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


ExternalLayout = Literal["megatron", "torchtitan", "olmo-core"]


class ExternalSource(BaseModel):
    """Where an external run's checkpoints live (``wsm runs add``, ``POST /runs``); wsm reads them in place."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    uri: str = Field(min_length=1)
    """The training run's checkpoint directory: an absolute local path or an fsspec URI (``s3://bucket/run``)."""
    layout: ExternalLayout
    """Directory layout of its checkpoints: ``megatron`` (``iter_<7 digits>/``), ``torchtitan``
    (``step-<N>/``) or ``olmo-core`` (``step<N>/model_and_optim/``)."""
    tokens_per_step: int | None = Field(default=None, gt=0)
    """Tokens per training step: a checkpoint's tokens are step x this. Unset: Megatron's saved
    arguments (iteration x global_batch_size x seq_length)."""
    tokenizer: str | None = None
    """Where the tokenizer registered with the run came from (its copy is ``runs/<run>/tokenizer.json``)."""


class ExternalFile(BaseModel):
    """One file of an external checkpoint directory: name and size (no sha256: it is never read whole)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    size: int = Field(ge=0)


class ExternalLocation(BaseModel):
    """Where an external checkpoint's data is: a DCP directory outside the store, read in place."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    uri: str = Field(min_length=1)
    """The DCP directory (local path or fsspec URI)."""
    format: Literal["dcp"] = "dcp"
    """The reader in merger/formats/ that opens it."""
    files: list[ExternalFile] = Field(default_factory=list)
    """Every file of the directory when it was registered, with its size."""
    identity: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the directory's ``.metadata`` digest and its files' names and sizes (docs/STORE.md):
    it identifies the checkpoint without reading its data, but is not a hash of its content."""

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
    source: ExternalSource | None = None
    """Set for an external run (trained elsewhere, registered with ``wsm runs add``); None for wsm's own."""

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
    location: ExternalLocation | None = None
    """Set for a checkpoint of an external run: its data stays there and ``files`` is empty."""

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
    """Store-relative directory of what was evaluated, e.g. ``runs/r1/models/anneal-80B``; or, for a
    Hugging Face directory evaluated in the run's context, ``hf:<absolute path>``."""
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
