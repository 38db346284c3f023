"""Anneal job records: what a job is (its spec), where it stands, and how it is stored.

A job record lives in the store at ``runs/<run>/jobs/<job_id>.json`` (docs/STORE.md, "Jobs"),
not only in Celery's result backend, so job state and results survive restarts of the API, the
workers and the broker. The job id is derived from everything that determines the result (run,
curve with parameters, the exact source checkpoints with their sha256 and weights, the eval flag
and config): asking twice for the same anneal gives the same job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from wsm.store import ArtifactNotFoundError, Store, layout
from wsm.store.backend import rm_quiet

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed"]
ACTIVE_STATES: frozenset[str] = frozenset({"queued", "running"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class JobSpec(BaseModel):
    """The immutable inputs of a job, resolved against the store when it was requested."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    run: str
    curve: dict[str, Any]
    """``CurveSpec.to_dict()``: name, alpha, floor, coefficients."""
    request: dict[str, Any]
    """The request as given (window, interval, count, end), for display."""
    selection: dict[str, Any]
    """``Selection.to_dict()`` with each checkpoint's ``sha256`` added."""
    evaluate: bool
    eval_config: dict[str, Any] | None = None
    model_name: str

    @property
    def tokens(self) -> list[int]:
        return [int(c["tokens"]) for c in self.selection["checkpoints"]]

    @property
    def window_end(self) -> int:
        return int(self.selection["window_end"])

    @staticmethod
    def merge_key(run: str, curve: dict[str, Any], selection: dict[str, Any]) -> str:
        """Digest of what the merged weights depend on (not the eval settings)."""
        return _digest({"run": run, "curve": curve, "selection": selection})

    def job_id(self) -> str:
        key = _digest(
            {
                "merge": self.merge_key(self.run, self.curve, self.selection),
                "evaluate": self.evaluate,
                "eval_config": self.eval_config if self.evaluate else None,
            }
        )
        return f"job-{key[:24]}"


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
    evals: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """``{"anneal": {...}, "baseline": {...}}``: summaries of the recorded EvalManifests."""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    enqueued_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def run(self) -> str:
        return self.spec.run

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def last_sign_of_life(self) -> datetime:
        """When the job last showed progress (or was enqueued, if it never started)."""
        return max(t for t in (self.heartbeat_at, self.enqueued_at) if t is not None)


def job_path(run: str, job_id: str) -> str:
    return layout.job_path(run, job_id)


def save(store: Store, record: JobRecord) -> None:
    """Write the record atomically (whole-file replace)."""
    record.updated_at = utcnow()
    store.write_bytes(job_path(record.run, record.job_id), record.model_dump_json(indent=2).encode())


def load(store: Store, run: str, job_id: str) -> JobRecord:
    """The record of ``job_id``; ``ArtifactNotFoundError`` if there is none."""
    return JobRecord.model_validate_json(store.read_bytes(job_path(run, job_id)))


def find(store: Store, run: str, job_id: str) -> JobRecord | None:
    try:
        return load(store, run, job_id)
    except ArtifactNotFoundError:
        return None


def list_jobs(store: Store, run: str) -> list[JobRecord]:
    """Every readable job record of ``run``, newest first (unreadable ones are logged and skipped)."""
    base = store.full_path(layout.jobs_dir(run))
    try:
        names = [str(p).rsplit("/", 1)[-1] for p in store.fs.ls(base, detail=False)]
    except FileNotFoundError:
        return []
    records = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            records.append(load(store, run, name[: -len(".json")]))
        except (ArtifactNotFoundError, ValueError) as e:
            log.warning("skipping job record %s/%s: %s", base, name, e)
    return sorted(records, key=lambda r: r.created_at, reverse=True)


def delete(store: Store, run: str, job_id: str) -> None:
    rm_quiet(store.fs, store.full_path(job_path(run, job_id)))
