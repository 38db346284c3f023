"""The Celery configuration that makes jobs crash-safe, and the broker choice."""

from __future__ import annotations

from pathlib import Path

from anneal.broker.app import (
    EVAL_QUEUE,
    MERGE_QUEUE,
    TASK_ANNEAL,
    TASK_EVALUATE,
    broker_url,
    create_celery,
    redact,
    result_backend,
)
from tests.conftest import make_settings


def test_embedded_default_is_sqlite_in_state_dir(tmp_path: Path) -> None:
    settings = make_settings(state_dir=str(tmp_path), broker_url=None)
    assert broker_url(settings) == f"sqla+sqlite:///{tmp_path}/broker.sqlite"
    assert result_backend(settings) == f"db+sqlite:///{tmp_path}/results.sqlite"
    redis = make_settings(broker_url="redis://:pw@h:6379/0")
    assert result_backend(redis) == "redis://:pw@h:6379/0"
    assert redact("redis://user:pw@h:6379/0") == "redis://user:***@h:6379/0"


def test_crash_safety_settings(tmp_path: Path) -> None:
    app = create_celery(
        make_settings(state_dir=str(tmp_path), broker_visibility_timeout_s=7200, broker_url="redis://h/0")
    )
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    assert conf.task_routes[TASK_ANNEAL]["queue"] == MERGE_QUEUE
    assert conf.task_routes[TASK_EVALUATE]["queue"] == EVAL_QUEUE
    assert conf.task_routes["celery.chord_unlock"]["queue"] == MERGE_QUEUE


def test_tasks_are_registered_by_name() -> None:
    from anneal.broker import tasks

    names = set(tasks.app.tasks)
    assert {"wsm.anneal", "wsm.merge_part", "wsm.finalize_merge", "wsm.evaluate"} <= names
