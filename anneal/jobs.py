"""Anneal job records: what a job is (its spec), where it stands, and how it is stored.

A job record lives in the store at ``runs/<run>/jobs/<job_id>.json`` (docs/STORE.md, "Jobs"),
not only in Celery's result backend, so job state and results survive restarts of the API, the
workers and the broker. The job id is derived from everything that determines the result (run,
curve with parameters, the exact source checkpoints with their sha256 and weights, the eval flag
and config): asking twice for the same anneal gives the same job.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from merger.formats.output import DEFAULT_OUT_FORMAT as DEFAULT_OUT_FORMAT
from merger.formats.output import OUT_FORMATS as OUT_FORMATS
from merger.formats.output import check_out_format
from merger.provenance import AnnealSelection as AnnealSelection
from wsm.eval_config import EvalConfig
from wsm.store import ArtifactNotFoundError, EvalManifest, Store
from wsm.store.writable import StoreUnwritable, release_reserve, writing

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed"]
ACTIVE_STATES: frozenset[str] = frozenset({"queued", "running"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


EvalTarget = Literal["anneal", "baseline"]


class EvalSummary(BaseModel):
    """What a job record keeps of one evaluation (the full record is the store's EvalManifest)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    """Evaluation name in the store (``runs/<run>/evals/<name>``)."""
    run: str
    """Run of the evaluated model."""
    model_dir: str
    """Store-relative directory of what was evaluated."""
    metrics: dict[str, float]
    """Metric name to value."""
    config: dict[str, Any]
    """The evaluation's configuration as recorded."""
    seeds: list[int]
    """Seeds the result depends on."""
    duration_s: float
    """Wall-clock seconds the evaluation took."""
    created_at: datetime
    """When the evaluation was recorded (UTC)."""

    @classmethod
    def of(cls, manifest: EvalManifest) -> EvalSummary:
        return cls(
            name=manifest.name,
            run=manifest.run,
            model_dir=manifest.model_id,
            metrics=dict(manifest.metrics),
            config=dict(manifest.config),
            seeds=list(manifest.seeds),
            duration_s=manifest.duration_s,
            created_at=manifest.created_at,
        )


class WindowRequest(BaseModel):
    """The window as the client asked for it, kept for display (the selection is what counts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(ge=1)
    """Requested window width, in tokens."""
    interval: int | None = Field(default=None, ge=1)
    """Requested spacing between merged checkpoints, in tokens (None: every checkpoint or ``count``)."""
    count: int | None = Field(default=None, ge=2)
    """Requested number of merged checkpoints."""
    end: int | None = Field(default=None, ge=0)
    """Requested end of the window, in tokens (None: the newest checkpoint)."""


class JobSpec(BaseModel):
    """The immutable inputs of a job, resolved against the store when it was requested."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    selection: AnnealSelection
    """Run, curve, window and the exact source checkpoints (with digests) and weights."""
    request: WindowRequest
    """The request as given, for display."""
    evaluate: bool
    """Whether the annealed model and the WSO checkpoint at the window's end get evaluated."""
    eval_config: EvalConfig | None = None
    """The evaluation's configuration (None: no evaluation)."""
    model_name: str
    """Name of the annealed model in ``runs/<run>/models/``: ``selection.model_name(out_format)``."""
    allow_nonfinite: bool = False
    """Publish the merge even if a checkpoint or the result holds NaN or Inf (else the job fails
    naming the tensor)."""
    out_format: str = DEFAULT_OUT_FORMAT
    """Layout of the annealed model: one of the merger's output formats (``safetensors``, or
    ``torch_dist``: a DCP directory in Megatron-LM's layout that ``--load`` and
    ``dist_checkpointing.load`` read at any parallelism)."""

    @field_validator("out_format")
    @classmethod
    def check_format(cls, value: str) -> str:
        """``value`` if the merger writes that format; a one-line error listing the formats otherwise."""
        return check_out_format(value)

    @property
    def run(self) -> str:
        return self.selection.run

    @property
    def tokens(self) -> list[int]:
        return self.selection.tokens

    @property
    def window_end(self) -> int:
        return self.selection.window_end

    def job_id(self) -> str:
        """Same merge and same evaluation settings, same job: a digest of exactly those."""
        key = _digest(
            {
                "merge": self.selection.key(),
                "evaluate": self.evaluate,
                "eval_config": self.eval_config.model_dump(mode="json") if self.eval_config else None,
                # Only when set, so the ids of every other job stay what they were; a request that
                # allows NaN is another job than the one that refused them.
                **({"allow_nonfinite": True} if self.allow_nonfinite else {}),
                **({"out_format": self.out_format} if self.out_format != DEFAULT_OUT_FORMAT else {}),
            }
        )
        return f"job-{key[:24]}"


class Lease(BaseModel):
    """Who may work on a job until when (anneal/lease.py); stored in the record, so it outlives its holder."""

    model_config = ConfigDict(extra="ignore")

    holder: str
    """The attempt holding the job: a merge's ``attempt_id``, or ``eval-…`` for its evaluation."""
    owner: str
    """The process that took it (``host:pid``), for people reading the record."""
    expires_at: datetime
    """Until when it holds; renewed by the heartbeat. After it, another worker may take the job over."""

    def live(self, now: datetime) -> bool:
        return now < self.expires_at


class JobRecord(BaseModel):
    """A job's state as persisted in the store; only the worker holding the job's lock updates it."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    spec: JobSpec
    state: JobState = "queued"
    stage: str = "queued"
    progress: float = 0.0
    message: str = ""
    error: str | None = None
    attempts: int = 0
    attempt_id: str | None = None
    """Random id of the current attempt: a stale chord of an earlier attempt recognises itself by it."""
    split_parts: int = 0
    model_published: bool = False
    evals: dict[EvalTarget, EvalSummary] = Field(default_factory=dict)
    """The recorded evaluations of the annealed model and of the WSO checkpoint beside it."""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    enqueued_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None
    lease: Lease | None = None
    """The attempt working on the job now, if any (None while queued, between stages and when finished)."""

    @property
    def run(self) -> str:
        return self.spec.run

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def phases(self) -> list[str]:
        """The stages this job goes through, in order: publishing only for a split merge, the
        evaluations only when it evaluates."""
        out = ["queued", "resolving", "merging"]
        if self.split_parts > 1:
            out.append("publishing")
        if self.spec.evaluate:
            out += ["waiting_eval", "evaluating_anneal", "evaluating_baseline"]
        return [*out, "done"]

    def last_sign_of_life(self) -> datetime:
        """When the job last showed progress (or was enqueued, if it never started)."""
        return max(t for t in (self.heartbeat_at, self.enqueued_at) if t is not None)

    def held(self, now: datetime) -> bool:
        """Whether a live attempt holds the job (its lease has not expired)."""
        return self.lease is not None and self.lease.live(now)


def save(store: Store, record: JobRecord, *, reserve: bool = True) -> None:
    """Write the record atomically (whole-file replace); :class:`StoreUnwritable` if the store refuses.

    On a full local disk the store's reserve (wsm/store/writable.py) is released for it, unless
    ``reserve`` is False (new jobs never take it: it is for recording the ones already accepted).
    """
    record.updated_at = utcnow()
    what = f"the record of job {record.job_id}"
    try:
        with writing(what):
            store.save_job(record.run, record.job_id, record)
    except StoreUnwritable as e:
        if not (reserve and e.errno in (errno.ENOSPC, errno.EDQUOT) and release_reserve(store)):
            raise
        with writing(what):
            store.save_job(record.run, record.job_id, record)


def load(store: Store, run: str, job_id: str) -> JobRecord:
    """The record of ``job_id``; ``ArtifactNotFoundError`` if there is none."""
    return store.load_job(run, job_id, JobRecord)


def find(store: Store, run: str, job_id: str) -> JobRecord | None:
    try:
        return load(store, run, job_id)
    except ArtifactNotFoundError:
        return None


def list_jobs(store: Store, run: str) -> list[JobRecord]:
    """Every readable job record of ``run``, newest first (unreadable ones are logged and skipped)."""
    return sorted(store.list_jobs(run, JobRecord), key=lambda r: r.created_at, reverse=True)


def delete(store: Store, run: str, job_id: str) -> None:
    store.delete_job(run, job_id)
