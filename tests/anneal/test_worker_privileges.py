"""A worker's first screen: started as root it says so in one wsm line, not Celery's block of text
(anneal/broker/privileges.py), and Celery's banner stays out unless asked for; Celery's refusal of a
privileged worker that accepts pickle stays."""

from __future__ import annotations

import os
import re

import pytest
from celery.exceptions import SecurityError

from anneal.broker.privileges import privileges_explained
from tests.api.worker import Worker, service_env
from tests.conftest import make_settings

ROOT = os.getuid() == 0 or os.geteuid() == 0


@pytest.fixture(scope="module")
def worker_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What a real ``wsm worker`` prints from start to ready."""
    tmp = tmp_path_factory.mktemp("worker")
    settings = make_settings(store_url=str(tmp / "store"), state_dir=str(tmp / "state"))
    worker = Worker(service_env(settings), tmp / "worker.log")
    try:
        worker.wait_ready()
    finally:
        worker.stop()
    return worker.tail(100_000)


def test_a_real_worker_explains_superuser_privileges_once(worker_output: str) -> None:
    text = worker_output
    assert "superuser privileges" not in text and "SecurityWarning" not in text, text
    if not ROOT:
        pytest.skip("not root: the root line is not expected")
    lines = re.findall(r"^.*WARNING wsm\.worker: .*\broot\b.*$", text, re.MULTILINE)
    assert len(lines) == 1 and "unprivileged user" in lines[0], text


def test_a_real_worker_starts_in_a_few_lines(worker_output: str) -> None:
    """No Celery banner (``wsm worker --banner`` shows it): wsm's line names the queues and broker."""
    assert "[tasks]" not in worker_output and "[config]" not in worker_output, worker_output
    assert re.search(r"INFO wsm\.worker: worker \S+: queues merge,eval, broker ", worker_output)
    assert " ready." in worker_output


def test_the_app_accepts_json_only() -> None:
    from anneal.broker.tasks import app

    assert list(app.conf.accept_content) == ["json"]


@pytest.mark.skipif(not ROOT, reason="Celery refuses pickle only to a privileged worker")
def test_a_privileged_worker_accepting_pickle_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("C_FORCE_ROOT", raising=False)
    with pytest.raises(SecurityError), privileges_explained(["json", "pickle"]):
        pass
