"""A worker started as root says so in one wsm line, not Celery's block of text (anneal/broker/privileges.py);
Celery's refusal of a privileged worker that accepts pickle stays."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from celery.exceptions import SecurityError

from anneal.broker.privileges import privileges_explained
from tests.api.worker import Worker, service_env
from tests.conftest import make_settings

ROOT = os.getuid() == 0 or os.geteuid() == 0


def test_a_real_worker_explains_superuser_privileges_once(tmp_path: Path) -> None:
    settings = make_settings(store_url=str(tmp_path / "store"), state_dir=str(tmp_path / "state"))
    worker = Worker(service_env(settings), tmp_path / "worker.log")
    try:
        worker.wait_ready()
    finally:
        worker.stop()
    text = worker.tail(100_000)
    assert "superuser privileges" not in text and "SecurityWarning" not in text, text
    if not ROOT:
        pytest.skip("not root: the root line is not expected")
    lines = re.findall(r"^.*WARNING wsm\.worker: .*\broot\b.*$", text, re.MULTILINE)
    assert len(lines) == 1 and "unprivileged user" in lines[0], text


def test_the_app_accepts_json_only() -> None:
    from anneal.broker.tasks import app

    assert list(app.conf.accept_content) == ["json"]


@pytest.mark.skipif(not ROOT, reason="Celery refuses pickle only to a privileged worker")
def test_a_privileged_worker_accepting_pickle_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("C_FORCE_ROOT", raising=False)
    with pytest.raises(SecurityError), privileges_explained(["json", "pickle"]):
        pass
