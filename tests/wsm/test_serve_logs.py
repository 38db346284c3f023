"""``wsm serve``'s screen: wsm's lines in wsm's format, uvicorn's INFO chatter kept out like any
third-party library's (its own start-up lines repeat wsm's), but its warnings still shown."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.api.worker import ROOT, free_port, service_env, wait_for
from tests.conftest import make_settings


def _serve(tmp_path: Path, level: str) -> str:
    settings = make_settings(store_url=str(tmp_path / "store"), state_dir=str(tmp_path / "state"))
    port = free_port()
    env = {
        **service_env(settings),
        "WSM_API_PORT": str(port),
        "WSM_API_HOST": "127.0.0.1",
        "WSM_LOG_LEVEL": level,
    }
    log = tmp_path / f"serve-{level}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wsm.cli", "serve"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(answers, 60, "the API to answer", lambda: log.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return log.read_text()


def test_serve_prints_wsm_lines_only(tmp_path: Path) -> None:
    text = _serve(tmp_path, "INFO")
    assert "INFO wsm.serve: serving the API on http://127.0.0.1:" in text, text
    assert "Uvicorn running" not in text and "Application startup complete" not in text, text
    assert "INFO:" not in text, text  # uvicorn's own format never reaches the screen


def test_debug_shows_uvicorn_in_wsm_format(tmp_path: Path) -> None:
    text = _serve(tmp_path, "DEBUG")
    assert "INFO uvicorn.error: Application startup complete." in text, text
