"""Unknown runs, checkpoints and models, and name collisions: one line naming what exists, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.sft.conftest import STEPS, TOKENS_PER_STEP, TinyRun
from wsm.store import ArtifactNotFoundError


def _wsm(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from wsm.cli import main

    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("command", "spec", "expected"),
    [
        (
            "export",
            "tiny/unknown",
            "run 'tiny' has no model 'unknown' (checkpoints: 61.44k; models: untrained)",
        ),
        ("evaluate", "tiny/999k", "run 'tiny' has no checkpoint at 999k tokens (checkpoints: 61.44k;"),
        ("evaluate", "nosuch", "no run 'nosuch' in the store (runs: tiny)"),
        ("export", "nosuch/latest", "no run 'nosuch' in the store (runs: tiny)"),
        ("evaluate", "runs/tiny/models/gone", "run 'tiny' has no model 'gone'"),
    ],
)
def test_unknown_model_is_one_line_naming_what_exists(
    tiny_run: TinyRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    spec: str,
    expected: str,
) -> None:
    extra = ["--hf", str(tmp_path / "out")] if command == "export" else []
    code, err = _wsm([command, spec, "--store", tiny_run.store.url, *extra], capsys)
    assert code == 2
    assert err.count("\n") == 0 and "Traceback" not in err
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_not_found_is_still_a_store_error(tiny_run: TinyRun) -> None:
    """Callers that catch the store's error (the anneal pipeline) keep working."""
    from trainer.load import ModelNotFoundError, resolve

    with pytest.raises(ArtifactNotFoundError) as info:
        resolve(tiny_run.store, tiny_run.run, "runs/tiny/checkpoints/000000000000000001")
    assert isinstance(info.value, ModelNotFoundError) and isinstance(info.value, ValueError)


def test_name_collision_names_the_flags_before_training(
    tiny_run: TinyRun, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.branch as branch

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the name is taken")

    monkeypatch.setattr(branch, "Trainer", no_training)
    fork = str(STEPS * TOKENS_PER_STEP)
    args = ["train", "branch", "--run", "tiny", "--from", fork, "--window", "2048", "--name", "untrained"]
    code, err = _wsm([*args, "--store", tiny_run.store.url], capsys)
    assert code == 2 and err.count("\n") == 0
    assert "already has a model named 'untrained'" in err
    assert "--overwrite" in err and "--name" in err and "overwrite=True" not in err


def test_missing_eval_config_file_is_one_line(tiny_run: TinyRun, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _wsm(
        ["evaluate", "tiny", "--config", "/nonexistent/eval.yaml", "--store", tiny_run.store.url], capsys
    )
    assert code == 2 and "eval.yaml: no such file" in err
