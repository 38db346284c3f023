"""The API's boundary to the pipeline: hand a job id to the broker, and check the broker is there.

Route tests replace :class:`Enqueuer` with a fake; production uses :class:`CeleryEnqueuer`,
which sends the ``wsm.anneal`` task by name (the API never imports the worker's tasks or torch).
"""

from __future__ import annotations

import logging
from typing import Protocol

from wsm.settings import Settings

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The broker did not accept the message (down, unreachable, or refusing)."""


class Enqueuer(Protocol):
    def enqueue(self, run: str, job_id: str) -> None:
        """Queue the merge stage of ``job_id``; raise :class:`BrokerUnavailable` if impossible."""

    def ping(self) -> str:
        """A short description of the broker if it answers; raise :class:`BrokerUnavailable` if not."""


class CeleryEnqueuer:
    """Sends jobs through Celery (``WSM_BROKER_URL`` or the embedded SQLite broker)."""

    def __init__(self, settings: Settings) -> None:
        from merger.celery_app import broker_url, create_celery, redact

        self._app = create_celery(settings)
        self.url = redact(broker_url(settings))

    def enqueue(self, run: str, job_id: str) -> None:
        from merger.celery_app import MERGE_QUEUE, TASK_ANNEAL

        try:
            self._app.send_task(TASK_ANNEAL, args=[run, job_id], queue=MERGE_QUEUE)
        except Exception as e:  # kombu/redis/sqlalchemy errors all mean "not queued"
            log.error("broker %s refused job %s: %s", self.url, job_id, e)
            raise BrokerUnavailable(
                f"the job broker ({self.url}) is unavailable: {type(e).__name__}: {e}"
            ) from e

    def ping(self) -> str:
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
        except Exception as e:
            raise BrokerUnavailable(
                f"the job broker ({self.url}) is unavailable: {type(e).__name__}: {e}"
            ) from e
        return f"{self.url} answered"
