"""The quickstart, for real: ``wsm up`` on a temporary store, a checkpoint, the API, an anneal, Ctrl-C.

This is what ``make up`` runs after setting up. The trainer saves every 10 steps here so the
test needs only a few checkpoints; everything else (embedded broker, worker, API) is the default.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

SAVE_EVERY = 20480  # 10 steps of the demo's 2,048 tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _wait_for(what: str, check: Any, timeout: float, proc: subprocess.Popen[str], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"wsm up exited early ({proc.returncode}) waiting for {what}:\n{log.read_text()[-4000:]}"
            )
        try:
            result = check()
        except (OSError, ValueError, KeyError):
            result = None
        if result:
            return result
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{log.read_text()[-4000:]}")


def _start(tmp_path: Path, port: int, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / f"up-{time.monotonic_ns()}.log"
    env = {
        **os.environ,
        "WSM_STATE_DIR": str(tmp_path / "state"),
        "WSM_CACHE_DIR": os.environ.get("WSM_CACHE_DIR", str(tmp_path / "cache")),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WSM_API_TOKEN", None)
    env.pop("WSM_BROKER_URL", None)
    argv = [sys.executable, "-m", "wsm.cli", "up", "--store", str(tmp_path / "store"), "--port", str(port)]
    argv += ["--set", f"checkpoint.save_every={SAVE_EVERY}", "--grace", "60", *extra]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, text=True)
    return proc, log


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    return proc.wait(timeout=120)


def test_quickstart_trains_serves_anneals_and_resumes(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    proc, log = _start(tmp_path, port)
    try:
        _wait_for("the API", lambda: _get(f"{api}/healthz")["status"] == "ok", 120, proc, log)
        checkpoints = _wait_for(
            "three checkpoints",
            lambda: len(c := _get(f"{api}/runs/demo/checkpoints")["checkpoints"]) >= 3 and c,
            600,
            proc,
            log,
        )
        status, job = _post(
            f"{api}/anneal", {"curve": "1-sqrt", "window": str(2 * SAVE_EVERY), "evaluate": False}
        )
        assert status == 202, job
        chosen = job["selection"]["checkpoints"]
        assert len(chosen) == 2 and abs(sum(c["c"] for c in chosen) - 1) < 1e-9
        done = _wait_for(
            "the anneal job",
            lambda: (j := _get(f"{api}/anneal/{job['job_id']}"))["state"] in ("done", "failed") and j,
            300,
            proc,
            log,
        )
        assert done["state"] == "done", done
        model = _get(f"{api}/models/{done['model_id']}")
        assert [s["tokens"] for s in model["sources"]] == [c["tokens"] for c in chosen]
        status, bad = _post(f"{api}/anneal", {"curve": "1-sqrt", "window": "80X"})
        assert status == 422 and "80X" in json.dumps(bad)
    finally:
        code = _stop(proc)
    text = log.read_text()
    assert code == 0, text[-4000:]
    for prefix in ("[trainer ]", "[worker  ]", "[api     ]"):
        assert prefix in text
    assert "stopped" in text
    newest = max(c["tokens"] for c in checkpoints)

    # Running it again resumes the same run instead of starting over.
    proc, log = _start(tmp_path, port, "--no-worker", "--no-api")
    try:
        _wait_for("the resume", lambda: "resum" in log.read_text().lower(), 180, proc, log)
    finally:
        assert _stop(proc) == 0
    stored = sorted(
        p.name for p in (tmp_path / "store/runs/demo/checkpoints").iterdir() if not p.name.startswith(".")
    )
    assert int(stored[-1]) >= newest
