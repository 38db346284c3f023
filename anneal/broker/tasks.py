"""Celery tasks: thin wrappers that deserialise arguments and call anneal/runner.py.

This is where the worker wires the trainer's evaluator into the use case's Evaluator port.

Arguments are plain ids (run, job id, attempt id, part index); the job's inputs are read from its
record in the store, so a message is tiny and a redelivered one runs against the current state.
Queues: merging on ``merge``, SFT evaluation on ``eval`` (anneal/broker/app.py routes them).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import chord, group

from anneal import runner
from anneal.broker.app import (
    EVAL_QUEUE,
    MERGE_QUEUE,
    TASK_ANNEAL,
    TASK_EVALUATE,
    TASK_FINALIZE,
    TASK_MERGE_PART,
    broker_url,
    create_celery,
)
from anneal.pipeline import PartResult
from anneal.ports import Evaluator
from anneal.recovery import Recovery
from wsm.settings import get_settings
from wsm.store import Store, open_store
from wsm.store.writable import StoreUnwritable

log = logging.getLogger(__name__)

app = create_celery()


@lru_cache(maxsize=1)
def _store() -> Store:
    return open_store(settings=get_settings())


def _evaluator() -> Evaluator:
    """The trainer's SFT evaluation behind the use case's Evaluator port (imports torch: worker only)."""
    from trainer.evaluate import evaluate_model

    return evaluate_model


def _broker() -> str:
    return broker_url(get_settings())


def enqueue_anneal(run: str, job_id: str) -> None:
    app.send_task(TASK_ANNEAL, args=[run, job_id], queue=MERGE_QUEUE)


def enqueue_evaluate(run: str, job_id: str) -> None:
    app.send_task(TASK_EVALUATE, args=[run, job_id], queue=EVAL_QUEUE)


def _start_split(run: str, job_id: str, attempt_id: str, parts: int) -> None:
    header = group(merge_part.s(run, job_id, attempt_id, i, parts) for i in range(parts))
    chord(header)(finalize_merge.s(run, job_id, attempt_id))


DISPATCH = runner.Dispatch(evaluate=enqueue_evaluate, split=_start_split)


def _later(task: Any, exc: Exception) -> Exception:
    """Retry ``task``: soon if the job's mutex was busy, with a growing delay if the store refused the claim.

    The delay doubles from ``job_heartbeat_s`` up to half the staleness limit, so a full or
    read-only store costs one small write per job now and then, never a merge.
    """
    settings = get_settings()
    if isinstance(exc, StoreUnwritable):
        cap = max(settings.job_heartbeat_s, settings.job_stale_after_s / 2)
        countdown = min(cap, settings.job_heartbeat_s * 2 ** min(task.request.retries, 16))
        log.warning("job store unwritable (%s); retrying in %.0fs", exc, countdown)
    else:
        countdown = settings.job_heartbeat_s
    return task.retry(countdown=countdown)  # type: ignore[no-any-return]


@app.task(name=TASK_ANNEAL, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
def anneal(self: Any, run: str, job_id: str) -> str:
    """Stages 1-2 of a job: resolve, merge (or split into parts), publish."""
    try:
        return runner.anneal(_store(), get_settings(), _broker(), run, job_id, DISPATCH)
    except (runner.Busy, StoreUnwritable) as e:
        raise _later(self, e) from None


@app.task(name=TASK_MERGE_PART, ignore_result=False)  # type: ignore[untyped-decorator]
def merge_part(run: str, job_id: str, attempt_id: str, index: int, parts: int) -> dict[str, Any]:
    """One part of a split merge: writes its shards to the shared scratch directory."""
    return runner.run_part(
        _store(), get_settings(), run, job_id, attempt_id, index, parts, broker_url=_broker()
    ).model_dump(mode="json")


@app.task(name=TASK_FINALIZE, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
def finalize_merge(self: Any, results: list[dict[str, Any]], run: str, job_id: str, attempt_id: str) -> str:
    """After every part: check the shards, publish them with the index, queue the evaluation."""
    try:
        parsed = [PartResult.model_validate(r) for r in results]
        return runner.finalize_split(
            _store(), get_settings(), _broker(), run, job_id, attempt_id, parsed, DISPATCH
        )
    except (runner.Busy, StoreUnwritable) as e:
        raise _later(self, e) from None


@app.task(name=TASK_EVALUATE, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
def evaluate(self: Any, run: str, job_id: str) -> str:
    """Stages 3-4: SFT evaluation of the annealed model and of the WSO checkpoint."""
    try:
        return runner.evaluate(_store(), get_settings(), _broker(), run, job_id, _evaluator())
    except (runner.Busy, StoreUnwritable) as e:
        raise _later(self, e) from None


def recovery() -> Recovery:
    """The sweep a worker runs at start and periodically (anneal/broker/worker_cli.py)."""
    return Recovery(_store(), get_settings(), enqueue_anneal, enqueue_evaluate, broker_url=_broker())
