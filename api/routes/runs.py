"""``/runs``: the store's runs, their checkpoints, models and evaluations; registering external runs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, status

from anneal import external, resolve
from anneal.external import SyncReport
from api.convert import checkpoint_out, eval_out, model_id, model_out, run_detail, run_summary
from api.deps import StoreDep, require_token, run_name
from api.errors import responses
from api.schemas import (
    CheckpointList,
    EvalList,
    ModelList,
    RunDetail,
    RunList,
    RunRegister,
    RunRegistered,
    SyncOut,
)
from wsm.store import RunManifest, Store

router = APIRouter(tags=["runs"])


def _run(store: Store, run: str) -> RunManifest:
    return store.get_run(resolve.choose_run(store, run_name(run)))


@router.get("/runs", response_model=RunList, summary="All runs")
def list_runs(store: StoreDep) -> RunList:
    return RunList(runs=[run_summary(r, store.list_checkpoints(r.run)) for r in store.list_runs()])


@router.get("/runs/{run}", response_model=RunDetail, summary="A run: configuration, progress and metrics")
def get_run(
    run: str,
    store: StoreDep,
    metrics_limit: int = Query(
        default=2000, ge=0, le=100_000, description="Return at most this many newest metrics records."
    ),
) -> RunDetail:
    manifest = _run(store, run)
    checkpoints = store.list_checkpoints(manifest.run)
    # One record more than asked tells whether older ones exist, without reading them all.
    metrics = store.read_metrics(manifest.run, limit=metrics_limit + 1)
    truncated = len(metrics) > metrics_limit
    metrics = metrics[len(metrics) - metrics_limit :] if metrics_limit else []
    return run_detail(manifest, checkpoints, metrics, truncated)


@router.get(
    "/runs/{run}/checkpoints", response_model=CheckpointList, summary="Published checkpoints of a run"
)
def list_checkpoints(run: str, store: StoreDep) -> CheckpointList:
    return CheckpointList(
        checkpoints=[checkpoint_out(m) for m in store.list_checkpoints(_run(store, run).run)]
    )


@router.get("/runs/{run}/models", response_model=ModelList, summary="Annealed and baseline models of a run")
def list_models(run: str, request: Request, store: StoreDep) -> ModelList:
    models = store.list_models(_run(store, run).run)
    return ModelList(
        models=[
            model_out(m, str(request.url_for("get_weights", model_id=model_id(m.run, m.name))))
            for m in models
        ]
    )


@router.get("/runs/{run}/evals", response_model=EvalList, summary="Evaluations recorded for a run")
def list_evals(run: str, store: StoreDep) -> EvalList:
    return EvalList(evals=[eval_out(m) for m in store.list_evals(_run(store, run).run)])


def _registered(store: Store, run: RunManifest, report: SyncReport) -> RunRegistered:
    return RunRegistered(
        run=run_summary(run, store.list_checkpoints(run.run)),
        sync=SyncOut(
            added=report.added, removed=report.removed, errors=report.errors, checkpoints=report.checkpoints
        ),
    )


@router.post(
    "/runs",
    status_code=status.HTTP_201_CREATED,
    response_model=RunRegistered,
    dependencies=[Depends(require_token)],
    responses=responses(400, 401, 409, 413, 422),
    summary="Register an external run: DCP checkpoints read where they lie",
)
def register_run(body: RunRegister, request: Request, store: StoreDep) -> RunRegistered:
    """Register a run trained elsewhere (Megatron-LM, torchtitan, OLMo-core) from its checkpoint directory.

    Nothing is copied but the tokenizer: each complete checkpoint gets a manifest pointing at its
    directory, new ones are found as they appear (workers, and POST /anneal, list the directory
    again every ``WSM_EXTERNAL_SYNC_TTL_S``), and only annealed models are written to the store.
    """
    run, report = external.register(
        store,
        run_name(body.run),
        body.source,
        layout=body.layout,
        tokens_per_step=body.tokens_per_step,
        tokenizer=body.tokenizer,
        description=body.description,
        overwrite=body.overwrite,
    )
    request.app.state.listing.invalidate()
    return _registered(store, run, report)


@router.post(
    "/runs/{run}/sync",
    response_model=RunRegistered,
    dependencies=[Depends(require_token)],
    responses=responses(400, 401, 404, 422),
    summary="List an external run's checkpoint directory again now",
)
def sync_run(
    run: str,
    request: Request,
    store: StoreDep,
    recheck: bool = Query(
        default=False, description="Also re-read every known checkpoint's .metadata (finds ones saved again)."
    ),
) -> RunRegistered:
    manifest = _run(store, run)
    report = external.sync(store, manifest, recheck=recheck)
    if report.changed:
        request.app.state.listing.invalidate()
    return _registered(store, manifest, report)
