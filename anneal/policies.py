"""Annealing policies: an anneal (and its evaluation) each time training passes another ``every`` tokens.

A policy is a record in the store, ``runs/<run>/policies/<policy_id>.json`` (docs/STORE.md), so it
survives restarts of every process. Its id is a digest of what it asks for: asking twice gives
the same policy. Every worker's recovery sweep (anneal/recovery.py, ``Recovery``) calls
:func:`sweep`, which creates the jobs of the points that are due.

**Points.** The k-th point is ``k × every`` tokens. It is due once the run has a checkpoint at or
past it; its anneal ends at the newest checkpoint at or before it (so ``every`` need not be a
multiple of the save interval). Points come from the checkpoints, not from events: a sweep after
any downtime catches up on every point passed meanwhile.

**No duplicates.** A point's job id is the digest of its job spec (anneal/jobs.py), the same
whichever worker, or ``POST /anneal``, asks. A point whose job exists, in any state, is left
alone; a failed one stays failed until someone asks again (``POST /anneal``), so a broken point
is not retried every sweep. Two workers sweeping at once may both write the same new record and
send two messages: the job's lock makes the second a no-op.

Points whose window does not fit yet (longer than the run at that point, too few checkpoints)
are reported with the reason and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from anneal import jobs, resolve, submit
from anneal.errors import InvalidWindowError, RequestError
from anneal.jobs import JobRecord, JobSpec, WindowRequest, utcnow
from merger.errors import MergeError
from merger.provenance import CurveRecord
from theory import CurveSpec, TheoryError, parse_tokens
from wsm.eval_config import EvalConfig
from wsm.settings import Settings
from wsm.store import ArtifactNotFoundError, CheckpointManifest, RunManifest, Store

log = logging.getLogger(__name__)


class PolicySpec(BaseModel):
    """What a policy asks for at each point: the anneal's curve and window, and the spacing of points."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str
    """The run it follows."""
    curve: CurveRecord
    """Decay curve of every anneal."""
    window: int = Field(ge=1)
    """Window width in tokens."""
    every: int = Field(ge=1)
    """A point every this many training tokens."""
    interval: int | None = Field(default=None, ge=1)
    """Spacing of the merged checkpoints (None: every checkpoint in the window, or ``count``)."""
    count: int | None = Field(default=None, ge=2)
    """Number of merged checkpoints."""
    evaluate: bool = True
    """Evaluate each annealed model and the WSO checkpoint beside it."""

    def policy_id(self) -> str:
        key = hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
        return f"policy-{key[:16]}"


class PolicyRecord(BaseModel):
    """A policy as stored."""

    model_config = ConfigDict(extra="ignore")

    policy_id: str
    spec: PolicySpec
    created_at: datetime = Field(default_factory=utcnow)


@dataclass(frozen=True)
class Point:
    """One point of a policy and what became of it."""

    tokens: int
    """``k × every``."""
    end: int
    """The window's end: the newest checkpoint at or before ``tokens``."""
    spec: JobSpec | None = None
    """The job this point asks for, if its window fits."""
    error: str | None = None
    """Why the window does not fit, otherwise."""

    @property
    def job_id(self) -> str | None:
        return self.spec.job_id() if self.spec is not None else None


class Snapshot:
    """Runs and checkpoints listed once for a whole sweep (resolve's ``Listing``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._runs: list[RunManifest] | None = None
        self._checkpoints: dict[str, list[CheckpointManifest]] = {}

    def list_runs(self) -> list[RunManifest]:
        if self._runs is None:
            self._runs = self.store.list_runs()
        return self._runs

    def list_checkpoints(self, run: str) -> list[CheckpointManifest]:
        if run not in self._checkpoints:
            self._checkpoints[run] = self.store.list_checkpoints(run)
        return self._checkpoints[run]


def due_points(every: int, checkpoints: Sequence[int]) -> list[tuple[int, int]]:
    """(k × every, window end) of every point the run has passed, one per distinct end.

    Linear in the number of checkpoints, whatever ``every`` is: the points between two
    checkpoints all end at the older one, so only the first of them is kept.
    """
    tokens = sorted(set(checkpoints))
    out: list[tuple[int, int]] = []
    for i, end in enumerate(tokens):
        first = -(-end // every) * every  # the first point at or after this checkpoint
        if first == 0:
            first = every
        limit = tokens[i + 1] if i + 1 < len(tokens) else end + 1  # points passed: up to the newest
        if first < limit:
            out.append((first, end))
    return out


def points(listing: resolve.Listing, spec: PolicySpec, eval_config: EvalConfig | None) -> list[Point]:
    """Every due point of ``spec`` with its job spec (or why it has none)."""
    checkpoints = [c.tokens for c in listing.list_checkpoints(spec.run)]
    out = []
    for target, end in due_points(spec.every, checkpoints):
        try:
            job = resolve.resolve(
                listing,
                curve=spec.curve.spec(),
                request=WindowRequest(window=spec.window, interval=spec.interval, count=spec.count, end=end),
                run=spec.run,
                evaluate=spec.evaluate,
                eval_config=eval_config,
            )
        except (RequestError, MergeError) as e:
            out.append(Point(tokens=target, end=end, error=str(e)))
            continue
        out.append(Point(tokens=target, end=end, spec=job))
    return out


def make_spec(
    listing: resolve.Listing,
    run: str | None,
    curve: CurveSpec,
    window: WindowRequest,
    every: int | str,
    evaluate: bool,
) -> PolicySpec:
    """A policy from a request's parts (validated by anneal/resolve.py); ``run`` None: the newest run."""
    try:
        tokens = parse_tokens(every, name="every")
    except TheoryError as e:
        raise InvalidWindowError(str(e)) from e
    return PolicySpec(
        run=resolve.choose_run(listing, run),
        curve=CurveRecord.of(curve),
        window=window.window,
        every=tokens,
        interval=window.interval,
        count=window.count,
        evaluate=evaluate,
    )


# -- the collection ------------------------------------------------------------------------------
def create(store: Store, spec: PolicySpec) -> tuple[PolicyRecord, bool]:
    """The policy for ``spec`` and whether this call created it."""
    policy_id = spec.policy_id()
    existing = find(store, spec.run, policy_id)
    if existing is not None:
        return existing, False
    record = PolicyRecord(policy_id=policy_id, spec=spec)
    store.save_policy(spec.run, policy_id, record)
    log.info("policy %s on %s: %s every %d tokens", policy_id, spec.run, spec.curve.name, spec.every)
    return record, True


def find(store: Store, run: str, policy_id: str) -> PolicyRecord | None:
    try:
        return store.load_policy(run, policy_id, PolicyRecord)
    except ArtifactNotFoundError:
        return None


def find_any(store: Store, policy_id: str) -> PolicyRecord | None:
    """The policy ``policy_id`` in whichever run holds it."""
    for run in store.list_runs():
        record = find(store, run.run, policy_id)
        if record is not None:
            return record
    return None


def list_policies(store: Store, run: str) -> list[PolicyRecord]:
    """A run's policies, oldest first."""
    return sorted(store.list_policies(run, PolicyRecord), key=lambda p: p.created_at)


def delete(store: Store, record: PolicyRecord) -> None:
    """Stop the policy; jobs it already created run on."""
    store.delete_policy(record.spec.run, record.policy_id)
    log.info("policy %s on %s deleted", record.policy_id, record.spec.run)


# -- acting on them ------------------------------------------------------------------------------
class _Direct:
    """A worker sends a job's message itself (no API publisher in between)."""

    def __init__(self, send: Callable[[str, str], None]) -> None:
        self._send = send

    def check(self) -> None:
        return None

    def submit(self, run: str, job_id: str) -> None:
        try:
            self._send(run, job_id)
        except Exception:  # the record is written: the recovery sweep sends it once it looks stale
            log.warning("policy job %s is recorded but its message did not go out", job_id, exc_info=True)


def _existing_jobs(store: Store, run: str) -> dict[str, JobRecord]:
    return {r.job_id: r for r in jobs.list_jobs(store, run)}


def sweep(store: Store, settings: Settings, send: Callable[[str, str], None]) -> list[str]:
    """Create the job of every due point that has none; returns the new job ids. Never raises.

    ``send(run, job_id)`` enqueues a job's merge (a worker's Celery enqueue). A message that
    cannot go out leaves the job ``queued``: the recovery sweep sends it again later.
    """
    created: list[str] = []
    try:
        listing = Snapshot(store)
        runs = [r.run for r in listing.list_runs()]
    except Exception:
        log.warning("policy sweep: cannot list the runs", exc_info=True)
        return created
    outbox = _Direct(send)
    for run in runs:
        try:
            records = list_policies(store, run)
            if not records:
                continue
            existing = _existing_jobs(store, run)
            for record in records:
                for point in points(listing, record.spec, settings.eval_config):
                    if point.spec is None or point.job_id in existing:
                        continue
                    job, new = submit.submit(store, point.spec, outbox)
                    existing[job.job_id] = job
                    if new:
                        created.append(job.job_id)
                        log.info(
                            "policy %s: anneal at %d tokens (point %d) is job %s",
                            record.policy_id,
                            point.end,
                            point.tokens,
                            job.job_id,
                        )
        except Exception:  # one run's trouble must not stop the others, nor the recovery sweep
            log.warning("policy sweep of run %s failed", run, exc_info=True)
    return created
