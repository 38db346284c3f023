"""Policies and grids with their jobs' states, as response models (api/schemas/research.py).

Job errors may name server paths; they are redacted here (api/redact.py) like a job's own.
"""

from __future__ import annotations

from anneal import jobs, policies
from anneal.grids import GridRecord
from anneal.jobs import JobRecord
from anneal.policies import PolicyRecord
from anneal.resolve import Listing
from api import redact
from api.convert import model_id
from api.schemas.research import GridCellOut, GridOut, PolicyOut, PolicyPointOut
from wsm.eval_config import EvalConfig
from wsm.store import Store


def run_jobs(store: Store, run: str) -> dict[str, JobRecord]:
    """A run's job records by id (one listing, one batched read)."""
    return {r.job_id: r for r in jobs.list_jobs(store, run)}


def _job_fields(record: JobRecord | None) -> dict[str, object]:
    if record is None:
        return {"state": "waiting", "stage": None, "progress": None, "model_id": None, "error": None}
    return {
        "state": record.state,
        "stage": record.stage,
        "progress": round(record.progress, 2),
        "model_id": model_id(record.run, record.spec.model_name) if record.model_published else None,
        "error": redact.current().text(record.error) if record.error is not None else None,
    }


def policy_out(
    record: PolicyRecord,
    listing: Listing,
    by_id: dict[str, JobRecord],
    eval_config: EvalConfig | None,
    *,
    created: bool | None = None,
) -> PolicyOut:
    spec = record.spec
    points = []
    for point in policies.points(listing, spec, eval_config):
        if point.spec is None:
            fields: dict[str, object] = {
                "state": "skipped",
                "stage": None,
                "progress": None,
                "model_id": None,
                "error": redact.current().text(point.error or ""),
            }
        else:
            fields = _job_fields(by_id.get(point.job_id or ""))
        points.append(
            PolicyPointOut(tokens=point.tokens, window_end=point.end, job_id=point.job_id, **fields)
        )
    newest = max((c.tokens for c in listing.list_checkpoints(spec.run)), default=0)
    return PolicyOut(
        policy_id=record.policy_id,
        run=spec.run,
        curve=spec.curve.model_dump(mode="json"),
        curve_label=spec.curve.spec().label(),
        window=spec.window,
        every=spec.every,
        interval=spec.interval,
        count=spec.count,
        evaluate=spec.evaluate,
        created_at=record.created_at,
        next_point=(newest // spec.every + 1) * spec.every,
        points=points,
        created=created,
    )


def grid_out(record: GridRecord, by_id: dict[str, JobRecord], *, created: bool | None = None) -> GridOut:
    spec = record.spec
    cells = []
    for cell in record.cells:
        job = by_id.get(cell.job_id) if cell.job_id else None
        if cell.job_id is None:
            fields: dict[str, object] = {
                "state": "skipped",
                "stage": None,
                "progress": None,
                "model_id": None,
                "error": redact.current().text(cell.error or ""),
            }
        else:
            fields = _job_fields(job)
        evals = job.evals if job is not None else {}
        cells.append(
            GridCellOut(
                curve=cell.curve.model_dump(mode="json"),
                curve_label=cell.curve_label,
                window=cell.window,
                interval=cell.interval,
                job_id=cell.job_id,
                checkpoints=len(job.spec.tokens) if job is not None else None,
                metrics=dict(evals["anneal"].metrics) if "anneal" in evals else {},
                wso_metrics=dict(evals["baseline"].metrics) if "baseline" in evals else {},
                **fields,
            )
        )
    return GridOut(
        grid_id=record.grid_id,
        run=spec.run,
        end=spec.end,
        curves=[c.spec().label() for c in spec.curves],
        windows=list(spec.windows),
        intervals=list(spec.intervals),
        evaluate=spec.evaluate,
        created_at=record.created_at,
        cells=cells,
        created=created,
    )
