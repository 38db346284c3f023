"""``wsm compare``: the same pairing as the API, as a table, from the store or through the API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from api.app import create_app
from tests.api import dashboard_seed as seed
from tests.api.conftest import FakeEnqueuer
from tests.api.worker import free_port
from tests.conftest import make_settings
from wsm.cli import main
from wsm.store import Store


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    seed.seed_all(Store(str(root)))
    return root


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["compare", *args]) == 0
    return capsys.readouterr().out


def test_table_from_the_store(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--store", str(seeded), "--run", "demo")
    lines = out.splitlines()
    assert lines[0] == "run demo: 2 merge(s) with a real-decay twin"
    assert "pretrain_val_loss (lower is better)" in out
    row = next(line for line in lines if line.startswith("1-sqrt / 20M (4 ckpts)"))
    wso = f"{seed.EVAL_METRICS['wso']['pretrain_val_loss']:.3f}"
    assert wso in row and "3.251" in row and "3.247±0.003 (n=2)" in row and "ok, noise" in row
    early = next(line for line in lines if line.startswith("1-sqrt / 20M (2 ckpts)"))
    assert "WITHIN NOISE" in early and "(checkpoints)" in early
    assert "merge(s) have no twin yet" in out


def test_every_metric_and_json(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--store", str(seeded), "--run", "demo", "--metric", "all")
    assert "sft_val_loss (lower is better)" in out and "task_accuracy (higher is better)" in out
    # The twins were not scored on tasks: the merge's accuracy shows, nothing is made up for the rest.
    accuracy = out[out.index("task_accuracy (higher") :].splitlines()[2]
    assert "0.5875" in accuracy and accuracy.endswith("no estimate")
    doc = json.loads(run(capsys, "--store", str(seeded), "--run", "demo", "--json"))
    assert [r["name"] for r in doc["rows"]] == ["anneal-1-sqrt-40M-at-120M", "anneal-1-sqrt-80M-at-200M"]


def test_unknown_metric_is_a_clear_error(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--store", str(seeded), "--metric", "bleu"]) == 2
    assert "--metric 'bleu': run demo has pretrain_val_loss" in capsys.readouterr().err


@pytest.fixture()
def api_url(seeded: Path, tmp_path: Path) -> Iterator[str]:
    settings = make_settings(store_url=str(seeded), state_dir=str(tmp_path / "state"), api_token=None)
    app = create_app(settings, store=Store(str(seeded)), enqueuer=FakeEnqueuer())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_through_the_api_prints_the_same(
    seeded: Path, api_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from_store = run(capsys, "--store", str(seeded), "--run", "demo", "--metric", "all")
    assert run(capsys, "--api", "--url", api_url, "--run", "demo", "--metric", "all") == from_store
