"""Grids: one request for curves × windows × intervals, run as ordinary (idempotent) anneal jobs.

The WSM paper's tables on merge duration (windows) and granularity (intervals) are such grids.
Every cell is resolved like ``POST /anneal`` and submitted through anneal/submit.py, so a cell
that equals a job asked for before *is* that job. The grid itself is a record in the store
(``runs/<run>/grids/<grid_id>.json``) listing its cells and their job ids; its id is a digest of
the request with the window end resolved, so asking again returns the same grid (and queues its
failed cells again, as ``POST /anneal`` does). A cell the run cannot serve (a window longer than
the run, an interval larger than the window) keeps its reason instead of a job.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from anneal import resolve, submit
from anneal.errors import InvalidWindowError, NoCheckpointsError, RequestError
from anneal.jobs import JobSpec, WindowRequest, utcnow
from merger.errors import MergeError
from merger.provenance import CurveRecord
from theory import CurveSpec
from wsm.eval_config import EvalConfig
from wsm.store import ArtifactNotFoundError, Store

log = logging.getLogger(__name__)

MAX_CELLS = 256
"""At most this many cells per grid: each is a merge and (maybe) two evaluations."""


class GridSpec(BaseModel):
    """A grid as asked for, with its window end resolved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str
    """Run whose checkpoints every cell merges."""
    curves: tuple[CurveRecord, ...] = Field(min_length=1)
    """Decay curves (rows of the paper's tables)."""
    windows: tuple[int, ...] = Field(min_length=1)
    """Window widths in tokens (merge duration)."""
    intervals: tuple[int | None, ...] = Field(min_length=1)
    """Checkpoint spacings in tokens (merge granularity); None: every checkpoint in the window."""
    end: int = Field(ge=0)
    """Where every window ends, in tokens."""
    evaluate: bool = True
    """Evaluate every annealed model and the WSO checkpoint at ``end``."""

    def grid_id(self) -> str:
        key = hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
        return f"grid-{key[:16]}"


class GridCell(BaseModel):
    """One curve × window × interval of a grid."""

    curve: CurveRecord
    curve_label: str
    window: int
    interval: int | None
    job_id: str | None = None
    """The cell's anneal job (None if the run cannot serve it)."""
    error: str | None = None
    """Why the cell has no job."""


class GridRecord(BaseModel):
    """A grid as stored: its request and its cells."""

    model_config = ConfigDict(extra="ignore")

    grid_id: str
    spec: GridSpec
    cells: list[GridCell]
    created_at: datetime = Field(default_factory=utcnow)


def resolve_end(listing: resolve.Listing, run: str, end: int | None) -> int:
    """``end``, or the run's newest checkpoint."""
    tokens = [c.tokens for c in listing.list_checkpoints(run)]
    if not tokens:
        raise NoCheckpointsError(f"run {run!r} has no published checkpoints yet")
    return tokens[-1] if end is None else end


def make_spec(
    listing: resolve.Listing,
    run: str | None,
    curves: list[CurveSpec],
    windows: list[WindowRequest],
    end: int | None,
    evaluate: bool,
) -> GridSpec:
    """A grid from a request's parts (each window with its interval, as anneal/resolve.py parsed them)."""
    run = resolve.choose_run(listing, run)
    return GridSpec(
        run=run,
        curves=tuple(dict.fromkeys(CurveRecord.of(c) for c in curves)),
        windows=tuple(dict.fromkeys(w.window for w in windows)),
        intervals=tuple(dict.fromkeys(w.interval for w in windows)),
        end=resolve_end(listing, run, end),
        evaluate=evaluate,
    )


def check_size(curves: int, windows: int, intervals: int) -> None:
    cells = curves * windows * intervals
    if cells > MAX_CELLS:
        raise InvalidWindowError(
            f"the grid has {curves} curves × {windows} windows × {intervals} intervals = {cells} cells; "
            f"at most {MAX_CELLS} per grid"
        )


def plan(
    listing: resolve.Listing, spec: GridSpec, eval_config: EvalConfig | None
) -> list[tuple[GridCell, JobSpec | None]]:
    """Every cell with the job it asks for, or why it has none."""
    check_size(len(spec.curves), len(spec.windows), len(spec.intervals))
    out: list[tuple[GridCell, JobSpec | None]] = []
    for curve, window, interval in itertools.product(spec.curves, spec.windows, spec.intervals):
        cell = GridCell(curve=curve, curve_label=curve.spec().label(), window=window, interval=interval)
        try:
            job = resolve.resolve(
                listing,
                curve=curve.spec(),
                request=WindowRequest(window=window, interval=interval, end=spec.end),
                run=spec.run,
                evaluate=spec.evaluate,
                eval_config=eval_config,
            )
        except (RequestError, MergeError) as e:
            out.append((cell.model_copy(update={"error": str(e)}), None))
            continue
        out.append((cell.model_copy(update={"job_id": job.job_id()}), job))
    return out


def create(
    store: Store,
    listing: resolve.Listing,
    spec: GridSpec,
    eval_config: EvalConfig | None,
    outbox: submit.Outbox,
) -> tuple[GridRecord, bool]:
    """Submit every cell's job (idempotent) and record the grid; whether the grid is new."""
    grid_id = spec.grid_id()
    planned = plan(listing, spec, eval_config)
    for _, job in planned:
        if job is not None:
            submit.submit(store, job, outbox)
    existing = find(store, spec.run, grid_id)
    if existing is not None:
        return existing, False
    record = GridRecord(grid_id=grid_id, spec=spec, cells=[cell for cell, _ in planned])
    store.save_grid(spec.run, grid_id, record)
    log.info("grid %s on %s: %d cells", grid_id, spec.run, len(record.cells))
    return record, True


def find(store: Store, run: str, grid_id: str) -> GridRecord | None:
    try:
        return store.load_grid(run, grid_id, GridRecord)
    except ArtifactNotFoundError:
        return None


def find_any(store: Store, grid_id: str) -> GridRecord | None:
    """The grid ``grid_id`` in whichever run holds it."""
    for run in store.list_runs():
        record = find(store, run.run, grid_id)
        if record is not None:
            return record
    return None


def list_grids(store: Store, run: str) -> list[GridRecord]:
    """A run's grids, newest first."""
    return sorted(store.list_grids(run, GridRecord), key=lambda g: g.created_at, reverse=True)
