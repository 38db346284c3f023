"""``wsm runs add|list|sync``: bring your own run from the command line, errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import external_run
from wsm.cli import main

T = external_run.TOKENS_PER_ITERATION


def test_add_list_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    source = external_run.copy_run(tmp_path / "run", (10, 20))
    assert main(["runs", "--store", store, "add", "ext", str(source)]) == 0
    out = capsys.readouterr().out
    assert f"registered run ext: megatron checkpoints at {source}; 2 checkpoint(s)" in out
    external_run.add_iteration(source, 30)
    assert main(["runs", "--store", store, "sync", "ext", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == [30 * T] and report["checkpoints"] == 3
    assert main(["runs", "--store", store, "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"run": "ext", "kind": "megatron", "checkpoints": 3, "latest_tokens": 30 * T, "source": str(source)}
    ]


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    titan = external_run.dcp_fixtures.cached("torchtitan", external_run.dcp_fixtures.torchtitan_run)
    assert main(["runs", "--store", store, "add", "t", str(titan)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsm runs: error: ") and "give the tokens per step (--tokens-per-step N" in err
    assert len(err.splitlines()) == 1
    assert main(["runs", "--store", store, "add", "t", str(titan), "--tokens-per-step", "4k"]) == 0
    assert "checkpoint(s), new: 400k, 800k" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["runs", "--store", store, "add", "x", str(titan), "--layout", "nemo"])
    assert "invalid choice: 'nemo'" in capsys.readouterr().err
