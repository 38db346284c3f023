"""``wsm evaluate A B``: several models in one process, the run's evaluation data prepared once; and
progress that names only the phases the config runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.trainer.sft.conftest import TinyRun
from trainer import evaluate as ev
from trainer.eval_data import prepare_eval_data
from trainer.evaluate import evaluate_model

# The held-out pre-training loss only: what a policy's evaluations of a long run would use.
QUICK = ["--set", "run_sft=false", "--set", "sharpness.enabled=false", "--set", "device=cpu"]


def test_batch_evaluates_every_model_and_prepares_data_once(
    tiny_run: TinyRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsm.cli import main

    ev._PREPARED.clear()
    calls: list[str] = []
    real = prepare_eval_data

    def counting(sm: Any, config: Any) -> Any:
        calls.append(sm.model_dir)
        return real(sm, config)

    monkeypatch.setattr(ev, "prepare_eval_data", counting)
    args = ["evaluate", tiny_run.trained, tiny_run.untrained, "--store", tiny_run.store.url, "--json", *QUICK]
    assert main(["--log-level", "WARNING", *args]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["model_id"] for d in docs] == [tiny_run.trained, tiny_run.untrained]
    assert all("pretrain_val_loss" in d["metrics"] and "sft_val_loss" not in d["metrics"] for d in docs)
    assert docs[0]["metrics"]["pretrain_val_loss"] < docs[1]["metrics"]["pretrain_val_loss"]
    assert calls == [tiny_run.trained]  # the second model reused the run's prepared data


def test_a_bad_model_is_refused_before_any_evaluation(
    tiny_run: TinyRun, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsm.cli import main

    assert main(["evaluate", tiny_run.trained, "tiny/999k", "--store", tiny_run.store.url, *QUICK]) == 2
    assert "no checkpoint at 999k" in capsys.readouterr().err


def test_progress_names_only_the_phases_that_run(tiny_run: TinyRun) -> None:
    from wsm.eval_config import EvalConfig

    config = EvalConfig.model_validate({"run_sft": False, "sharpness": {"enabled": False}, "device": "cpu"})
    seen: list[tuple[str, float]] = []
    evaluate_model(
        tiny_run.store,
        tiny_run.run,
        tiny_run.untrained,
        config,
        force=True,
        progress=lambda p, f: seen.append((p, f)),
    )
    assert {p for p, _ in seen} == {"load", "pretrain_loss"}
    assert [f for _, f in seen] == sorted(f for _, f in seen) and seen[-1][1] == 1.0
