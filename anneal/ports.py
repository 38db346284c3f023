"""The use case's two outward ports: how a job reaches a worker, and how a model is evaluated.

Adapters live elsewhere: :class:`Enqueuer` is implemented by the Celery adapter
(anneal/broker/enqueue.py) and by fakes in tests; :class:`Evaluator` by the trainer's SFT
evaluation (``trainer.evaluate.evaluate_model``), which the worker wires in (anneal/broker/tasks.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from wsm.eval_config import EvalConfig
from wsm.store import EvalManifest, Store


class Enqueuer(Protocol):
    """Hands job ids to the merge workers."""

    def enqueue(self, run: str, job_id: str) -> None:
        """Queue the merge stage of ``job_id``; raise :class:`~anneal.errors.BrokerUnavailable` if impossible."""

    def ping(self) -> str:
        """A short description of the broker if it answers; raise ``BrokerUnavailable`` if not."""


class Evaluator(Protocol):
    """Runs (or reuses) the evaluation of one store model dir with one config."""

    def __call__(
        self,
        store: Store,
        run: str,
        model_dir: str,
        config: EvalConfig | None,
        *,
        progress: Callable[..., Any] | None = None,
    ) -> EvalManifest: ...
