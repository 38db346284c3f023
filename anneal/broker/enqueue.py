"""The Celery implementation of the :class:`~anneal.ports.Enqueuer` port.

It sends the ``wsm.anneal`` task by name, so whoever builds it (``wsm serve``) never imports the
worker's tasks or torch. Route tests use a fake enqueuer instead.
"""

from __future__ import annotations

import logging

from anneal.errors import BrokerUnavailable
from wsm.settings import Settings

log = logging.getLogger(__name__)


class CeleryEnqueuer:
    """Sends jobs through Celery (``WSM_BROKER_URL`` or the embedded SQLite broker)."""

    def __init__(self, settings: Settings) -> None:
        from anneal.broker.app import broker_url, create_celery, redact

        self._app = create_celery(settings)
        self.url = redact(broker_url(settings))

    def enqueue(self, run: str, job_id: str) -> None:
        from anneal.broker.app import MERGE_QUEUE, TASK_ANNEAL

        try:
            # ignore_result: nobody reads it, and a Redis backend would keep a subscription per task.
            self._app.send_task(TASK_ANNEAL, args=[run, job_id], queue=MERGE_QUEUE, ignore_result=True)
        except Exception as e:  # kombu/redis/sqlalchemy errors all mean "not queued"
            log.error("broker %s refused job %s: %s", self.url, job_id, e)
            raise BrokerUnavailable(
                f"the job broker ({self.url}) is unavailable: {type(e).__name__}: {e}"
            ) from e

    def close(self) -> None:
        """Drop the broker and result-backend connections (tests and benchmarks that stop the broker)."""
        self._app.close()

    def ping(self) -> str:
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
        except Exception as e:
            raise BrokerUnavailable(
                f"the job broker ({self.url}) is unavailable: {type(e).__name__}: {e}"
            ) from e
        return f"{self.url} answered"
