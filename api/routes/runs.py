"""``/runs``: the store's runs, their checkpoints, models and evaluations (read-only)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from anneal import resolve
from api.convert import checkpoint_out, eval_out, model_id, model_out, run_detail, run_summary
from api.deps import StoreDep, run_name
from api.schemas import CheckpointList, EvalList, ModelList, RunDetail, RunList
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
