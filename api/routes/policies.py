"""``/policies``: annealing policies that fill the frontier while pre-training runs.

A policy is stored (anneal/policies.py); the workers' recovery sweep creates the job of every
point training passes, so the API only records, lists and deletes policies and shows their points.
"""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response, status

from anneal import policies, resolve
from anneal.policies import PolicyRecord, PolicySpec
from api.convert_research import policy_out, run_jobs
from api.deps import StoreDep, require_token, run_name
from api.errors import ApiError, responses
from api.schemas.research import PolicyList, PolicyOut, PolicyRequest
from wsm.store import Store, validate_name

router = APIRouter(tags=["policies"])


def _spec(request: Request, body: PolicyRequest) -> PolicySpec:
    curve = resolve.curve_spec(body.curve, alpha=body.alpha, floor=body.floor)
    # The window is resolved against checkpoints at each point; here only its form is checked.
    window = resolve.window_request(body.window, body.interval, body.count, None)
    run = validate_name(body.run, "run name") if body.run is not None else None
    return policies.make_spec(request.app.state.listing, run, curve, window, body.every, body.evaluate)


def _out(request: Request, record: PolicyRecord, created: bool | None = None) -> PolicyOut:
    store: Store = request.app.state.store
    return policy_out(
        record,
        policies.Snapshot(store),
        run_jobs(store, record.spec.run),
        request.app.state.settings.eval_config,
        created=created,
    )


@router.post(
    "/policies",
    status_code=status.HTTP_201_CREATED,
    response_model=PolicyOut,
    dependencies=[Depends(require_token)],
    responses={
        200: {"description": "The same policy exists", "model": PolicyOut},
        **responses(401, 404, 422),
    },
    summary="Anneal (and evaluate) each time training passes another `every` tokens",
)
async def post_policy(body: PolicyRequest, request: Request) -> Response:
    """Record the policy (idempotent: the same request gives the same policy, 200).

    Every worker's recovery sweep (each ``WSM_RECOVERY_INTERVAL_S``) creates the anneal job of each
    point passed, catching up on points passed while nothing ran; a point never gets two jobs.
    """

    def create() -> PolicyOut:
        record, created = policies.create(request.app.state.store, _spec(request, body))
        return _out(request, record, created)

    out = await anyio.to_thread.run_sync(create)
    code = status.HTTP_201_CREATED if out.created else status.HTTP_200_OK
    return Response(out.model_dump_json(), status_code=code, media_type="application/json")


@router.get(
    "/policies", response_model=PolicyList, responses=responses(400, 404), summary="Annealing policies"
)
def list_policies(
    request: Request,
    store: StoreDep,
    run: str | None = Query(default=None, description="Run name; default: every run."),
) -> PolicyList:
    names = (
        [resolve.choose_run(store, run_name(run))] if run is not None else [r.run for r in store.list_runs()]
    )
    return PolicyList(
        policies=[_out(request, record) for name in names for record in policies.list_policies(store, name)]
    )


def _find(store: Store, policy_id: str) -> PolicyRecord:
    record = policies.find_any(store, validate_name(policy_id, "policy id"))
    if record is None:
        raise ApiError(404, "unknown_policy", f"no policy {policy_id!r}; list them with GET /policies")
    return record


@router.get(
    "/policies/{policy_id}",
    response_model=PolicyOut,
    responses=responses(400, 404),
    summary="A policy and the state of each of its points",
)
def get_policy(policy_id: str, request: Request, store: StoreDep) -> PolicyOut:
    return _out(request, _find(store, policy_id))


@router.delete(
    "/policies/{policy_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    dependencies=[Depends(require_token)],
    responses=responses(400, 401, 404),
    summary="Stop a policy (jobs it created run on)",
)
def delete_policy(policy_id: str, store: StoreDep) -> Response:
    policies.delete(store, _find(store, policy_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
