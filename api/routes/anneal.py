"""``/anneal``: request an anneal (validate, resolve the window, enqueue) and follow its job."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response, status

from anneal import external, jobs, resolve
from anneal import submit as service
from anneal.errors import BrokerUnavailable
from anneal.jobs import JobRecord
from api.convert import job_out
from api.deps import StoreDep, require_token, run_name
from api.errors import ApiError, responses
from api.schemas import AnnealAccepted, AnnealRequest, JobList, JobOut
from wsm.store import validate_name

router = APIRouter(tags=["anneal"])


def _status_url(request: Request, job_id: str) -> str:
    # base_url carries the root path; request.url_for would walk the whole route table per call.
    return f"{request.base_url}anneal/{job_id}"


@router.post(
    "/anneal",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AnnealAccepted,
    dependencies=[Depends(require_token)],
    responses={
        200: {"description": "The job already finished", "model": AnnealAccepted},
        **responses(401, 404, 409, 413, 422, 503),
    },
    summary="Anneal a window of a run's checkpoints",
)
async def post_anneal(body: AnnealRequest, request: Request) -> Response:
    """Resolve the window to checkpoints and weights (Theorem 3.1), create the job and enqueue it.

    Idempotent: the same run, curve, checkpoints and evaluation settings give the same job id; a
    finished job is returned at once (200), a new or running one with 202. A 202 means the job is
    durably recorded; its broker message is sent right after, in the background.
    """
    # The hot path of the service: one hop to a worker thread for everything that may block
    # (listing refresh, store reads and writes), and the answer rendered once, here.
    state = request.app.state
    curve = resolve.curve_spec(body.curve, alpha=body.alpha, floor=body.floor)
    window = resolve.window_request(body.window, body.interval, body.count, body.end)
    run = validate_name(body.run, "run name") if body.run is not None else None

    def resolve_and_submit() -> tuple[JobRecord, bool, list[str]]:
        chosen = resolve.choose_run(state.listing, run)
        # An external run's directory is listed again once its last listing is older than the TTL.
        if external.refresh(state.store, state.listing, chosen, state.settings.external_sync_ttl_s):
            state.listing.invalidate()
        spec = resolve.resolve(
            state.listing,
            curve=curve,
            request=window,
            run=chosen,
            evaluate=body.evaluate,
            eval_config=state.settings.eval_config,
            allow_nonfinite=body.allow_nonfinite,
            out_format=body.out_format,
        )
        runs = {r.run: r for r in state.listing.list_runs()}
        warnings = resolve.window_warnings(runs.get(spec.run), spec.selection)
        return (*service.submit(state.store, spec, state.publisher, state.write_probe), warnings)

    try:
        record, created, warnings = await anyio.to_thread.run_sync(resolve_and_submit)
    except BrokerUnavailable as e:
        raise ApiError(503, "broker_unavailable", f"{e}; the job was not queued, try again later") from e
    out = job_out(record, _status_url(request, record.job_id), created=created, warnings=warnings)
    code = status.HTTP_200_OK if record.state == "done" else status.HTTP_202_ACCEPTED
    return Response(out.model_dump_json(), status_code=code, media_type="application/json")


@router.get(
    "/anneal/{job_id}",
    response_model=JobOut,
    name="get_job",
    responses=responses(400, 404),
    summary="A job's stage, progress, error, model and evaluations",
)
def get_job(job_id: str, request: Request, store: StoreDep) -> JobOut:
    validate_name(job_id, "job id")
    record = service.find_job(store, job_id)
    if record is None:
        raise ApiError(404, "unknown_job", f"no job {job_id!r}; list jobs with GET /anneal?run=<run>")
    return job_out(record, _status_url(request, job_id))


@router.get(
    "/anneal", response_model=JobList, responses=responses(400, 404), summary="Jobs of a run (or of all runs)"
)
def list_jobs(
    request: Request,
    store: StoreDep,
    run: str | None = Query(default=None, description="Run name; default: every run."),
) -> JobList:
    if run is not None:
        names = [resolve.choose_run(store, run_name(run))]
    else:
        names = [r.run for r in store.list_runs()]
    records = [r for name in names for r in jobs.list_jobs(store, name)]
    records.sort(key=lambda r: r.created_at, reverse=True)
    return JobList(jobs=[job_out(r, _status_url(request, r.job_id)) for r in records])
