"""The Celery application of wsm: broker choice, queues, and the settings that make jobs crash-safe.

Broker: ``WSM_BROKER_URL``. Production uses Redis. Unset, wsm uses kombu's SQLAlchemy transport
on a SQLite file in ``state_dir`` (``sqla+sqlite:///…/broker.sqlite``): a real broker with
queues shared by every process on the machine and no server to run. Its trade-offs (see
docs/API.md): it polls (about one second of latency per hop), serialises writers on one file
(fine for tens of requests per second, not thousands), only works for processes on one machine,
and forgets a message whose consumer was SIGKILLed; job records plus the workers' recovery sweep
(anneal/runner.py) cover that last point.

Crash safety: ``acks_late`` (a message is acknowledged only after its task returns),
``reject_on_worker_lost`` (a task whose pool process died is requeued), prefetch 1 (a worker
holds only the message it runs), and a Redis visibility timeout longer than the longest job.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from wsm.settings import Settings, get_settings

MERGE_QUEUE = "merge"
EVAL_QUEUE = "eval"

TASK_ANNEAL = "wsm.anneal"
TASK_MERGE_PART = "wsm.merge_part"
TASK_FINALIZE = "wsm.finalize_merge"
TASK_EVALUATE = "wsm.evaluate"


def broker_url(settings: Settings) -> str:
    """The configured broker, or the embedded SQLite one under ``state_dir``."""
    if settings.broker_url:
        return settings.broker_url
    return f"sqla+sqlite:///{os.path.abspath(os.path.join(settings.state_dir, 'broker.sqlite'))}"


def result_backend(settings: Settings) -> str:
    """Where chord results go: the Redis broker itself, or SQLite next to the embedded broker."""
    if settings.result_backend:
        return settings.result_backend
    url = broker_url(settings)
    if url.startswith(("redis://", "rediss://")):
        return url
    return f"db+sqlite:///{os.path.abspath(os.path.join(settings.state_dir, 'results.sqlite'))}"


def redact(url: str) -> str:
    """A broker URL without its password, for logs and /healthz."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"


def _sqlite_creator(path: str) -> Callable[[], sqlite3.Connection]:
    """Connections in WAL mode with ``synchronous=NORMAL``: a commit no longer waits for fsync.

    A crash of the process loses nothing; a power cut may lose the last few messages, which the
    job records in the store and the workers' recovery sweep re-enqueue. This takes the enqueue
    from ~12 ms to well under 1 ms, which is what keeps POST /anneal fast under load.
    """

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return connect


def _transport_options(url: str, settings: Settings) -> dict[str, Any]:
    if url.startswith("sqla+sqlite:///"):
        # Passed to SQLAlchemy's create_engine by kombu's transport.
        return {"creator": _sqlite_creator(url[len("sqla+sqlite:///") :])}
    if url.startswith(("redis://", "rediss://")):
        return {"visibility_timeout": settings.broker_visibility_timeout_s, "socket_connect_timeout": 3}
    return {}


def create_celery(settings: Settings | None = None) -> Celery:
    """A configured Celery app (the worker and the API each build one from their settings)."""
    settings = settings or get_settings()
    url = broker_url(settings)
    if url.startswith("sqla+sqlite"):
        os.makedirs(settings.state_dir, exist_ok=True)
    app = Celery("wsm", broker=url, backend=result_backend(settings))
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=False,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=7 * 24 * 3600,
        task_default_queue=MERGE_QUEUE,
        task_queues=[Queue(MERGE_QUEUE), Queue(EVAL_QUEUE)],  # type: ignore[no-untyped-call]
        task_routes={
            TASK_ANNEAL: {"queue": MERGE_QUEUE},
            TASK_MERGE_PART: {"queue": MERGE_QUEUE},
            TASK_FINALIZE: {"queue": MERGE_QUEUE},
            "celery.chord_unlock": {"queue": MERGE_QUEUE},
            TASK_EVALUATE: {"queue": EVAL_QUEUE},
        },
        broker_transport_options=_transport_options(url, settings),
        result_backend_transport_options=_transport_options(url, settings) if url.startswith("redis") else {},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        # The API must answer "broker down" quickly rather than hang: few, short publish retries.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
