"""``wsm anneal`` against the app (in-process): request, follow to done, report the model."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from anneal import runner
from api.app import create_app
from tests.api.conftest import FakeEnqueuer
from wsm.cli import main
from wsm.settings import Settings
from wsm.store import Store


class RunningEnqueuer(FakeEnqueuer):
    """Runs the merge stage right away, as a worker would."""

    def __init__(self, store: Store, settings: Settings) -> None:
        super().__init__()
        self.store, self.settings = store, settings

    def enqueue(self, run: str, job_id: str) -> None:
        super().enqueue(run, job_id)
        dispatch = runner.Dispatch(evaluate=lambda r, j: None, split=lambda *a: None)
        runner.anneal(self.store, self.settings, "sqla+sqlite:///x", run, job_id, dispatch)


def test_wsm_anneal_wait(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, api_settings: Settings, run_store: Store
) -> None:
    app = create_app(api_settings, store=run_store, enqueuer=RunningEnqueuer(run_store, api_settings))
    monkeypatch.setattr(httpx, "Client", lambda base_url, headers, timeout: TestClient(app, headers=headers))
    code = main(["anneal", "--curve", "1-sqrt", "--window", "40M", "--no-eval", "--wait", "--poll", "0.01"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    assert "curve 1-sqrt, window 40000000" in out and "model r1:anneal-1-sqrt-w40M-at-100M-n4-" in out
    assert "HTTP Request" not in captured.err  # polling is progress, not one httpx INFO line per request


def test_wsm_anneal_reports_api_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, client: TestClient
) -> None:
    monkeypatch.setattr(httpx, "Client", lambda base_url, headers, timeout: client)
    assert main(["anneal", "--curve", "bogus", "--window", "40M"]) == 2
    assert "unknown_curve" in capsys.readouterr().err


def test_wsm_anneal_out_format(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, api_settings: Settings, run_store: Store
) -> None:
    """``--out-format torch_dist`` end to end: the job's model is in Megatron's layout; a format the
    merger lacks is the API's one-line refusal."""
    app = create_app(api_settings, store=run_store, enqueuer=RunningEnqueuer(run_store, api_settings))
    monkeypatch.setattr(httpx, "Client", lambda base_url, headers, timeout: TestClient(app, headers=headers))
    argv = ["anneal", "--curve", "1-sqrt", "--window", "40M", "--no-eval", "--wait", "--poll", "0.01"]
    assert main([*argv, "--out-format", "torch_dist"]) == 0
    [model] = [m for m in run_store.list_models("r1") if m.name.endswith("-torch_dist")]
    assert model.name in capsys.readouterr().out
    assert any(f.name == "release/.metadata" for f in model.files)
    assert main([*argv, "--out-format", "gguf"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'gguf' is not one of safetensors, torch_dist" in err and err.count("\n") == 0
