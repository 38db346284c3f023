"""``/grids``: curves × windows × intervals in one request, run as idempotent anneal jobs, read back
as one table (anneal/grids.py)."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response, status

from anneal import grids, resolve
from anneal.errors import BrokerUnavailable
from anneal.grids import GridRecord, GridSpec
from api.convert_research import grid_out, run_jobs
from api.deps import StoreDep, require_token, run_name
from api.errors import ApiError, responses
from api.schemas.research import GridList, GridOut, GridRequest
from wsm.store import Store, validate_name

router = APIRouter(tags=["grids"])


def _spec(request: Request, body: GridRequest) -> GridSpec:
    grids.check_size(len(body.curves), len(body.windows), len(body.intervals))
    curves = [resolve.curve_spec(c, alpha=body.alpha, floor=body.floor) for c in body.curves]
    windows = [resolve.window_request(w, i, None, body.end) for w in body.windows for i in body.intervals]
    run = validate_name(body.run, "run name") if body.run is not None else None
    return grids.make_spec(request.app.state.listing, run, curves, windows, windows[0].end, body.evaluate)


@router.post(
    "/grids",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=GridOut,
    dependencies=[Depends(require_token)],
    responses={
        200: {"description": "The same grid exists", "model": GridOut},
        **responses(401, 404, 409, 413, 422, 503),
    },
    summary="Anneal every curve × window × interval at one point (the WSM paper's tables)",
)
async def post_grid(body: GridRequest, request: Request) -> Response:
    """Resolve and submit every cell as an anneal job; a cell the run cannot serve says why.

    Idempotent: the same request (its end resolved) gives the same grid and the same jobs; asking
    again queues failed cells again.
    """
    state = request.app.state

    def create() -> GridOut:
        spec = _spec(request, body)
        record, created = grids.create(
            state.store, state.listing, spec, state.settings.eval_config, state.publisher
        )
        return grid_out(record, run_jobs(state.store, spec.run), created=created)

    try:
        out = await anyio.to_thread.run_sync(create)
    except BrokerUnavailable as e:
        raise ApiError(503, "broker_unavailable", f"{e}; ask again later (cells already queued stay)") from e
    code = status.HTTP_202_ACCEPTED if out.created else status.HTTP_200_OK
    return Response(out.model_dump_json(), status_code=code, media_type="application/json")


@router.get("/grids", response_model=GridList, responses=responses(400, 404), summary="Grids of a run")
def list_grids(
    store: StoreDep, run: str | None = Query(default=None, description="Run name; default: every run.")
) -> GridList:
    names = (
        [resolve.choose_run(store, run_name(run))] if run is not None else [r.run for r in store.list_runs()]
    )
    out = []
    for name in names:
        by_id = run_jobs(store, name)
        out += [grid_out(record, by_id) for record in grids.list_grids(store, name)]
    return GridList(grids=out)


def _find(store: Store, grid_id: str) -> GridRecord:
    record = grids.find_any(store, validate_name(grid_id, "grid id"))
    if record is None:
        raise ApiError(404, "unknown_grid", f"no grid {grid_id!r}; list them with GET /grids?run=<run>")
    return record


@router.get(
    "/grids/{grid_id}",
    response_model=GridOut,
    responses=responses(400, 404),
    summary="A grid as one table: each cell's job and metrics",
)
def get_grid(grid_id: str, store: StoreDep) -> GridOut:
    record = _find(store, grid_id)
    return grid_out(record, run_jobs(store, record.spec.run))
