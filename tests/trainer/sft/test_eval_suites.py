"""Evaluations on suites from files: cached by the suite's content, drops counted in the stored record,
GSM8K-style answers scored by extraction."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from tests.trainer.sft.conftest import TinyRun, fast_eval_config
from trainer.evaluate import evaluate_model

SFT = Path(__file__).parents[1] / "fixtures" / "sft"


def _quick(suite: Path, **overrides: Any) -> Any:
    """No SFT, sharpness or pre-training loss: only loading and tokenising the suite."""
    return fast_eval_config(
        suite=str(suite),
        run_sft=False,
        pretrain_loss=False,
        sharpness={"enabled": False},
        **overrides,
    )


def test_editing_a_suite_gives_a_new_evaluation(tiny_run: TinyRun, tmp_path: Path) -> None:
    suite = tmp_path / "mine.jsonl"
    suite.write_text(
        "".join(json.dumps({"instruction": f"Say {i}", "output": str(i)}) + "\n" for i in range(20))
    )
    first = evaluate_model(tiny_run.store, tiny_run.run, tiny_run.trained, _quick(suite))
    assert first.extra["suite"]["train"] + first.extra["suite"]["valid"] == 20
    same = evaluate_model(tiny_run.store, tiny_run.run, tiny_run.trained, _quick(suite))
    assert same.name == first.name
    # Same path, new content: the stored result of the old content must not come back.
    suite.write_text("\n".join(suite.read_text().splitlines()[:10]) + "\n")
    edited = evaluate_model(tiny_run.store, tiny_run.run, tiny_run.trained, _quick(suite))
    assert edited.name != first.name
    assert edited.extra["suite"]["train"] + edited.extra["suite"]["valid"] == 10
    assert edited.extra["suite"]["sha256"] != first.extra["suite"]["sha256"]


def test_dropped_records_are_in_the_evaluation_record(tiny_run: TinyRun, tmp_path: Path) -> None:
    suite = tmp_path / "chat"
    suite.mkdir()
    shutil.copy(SFT / "sharegpt.json", suite / "train.json")
    shutil.copy(SFT / "messages_parts.jsonl", suite / "valid.jsonl")
    # A context of 24 tokens: some records lose their answer, others are cut.
    record = evaluate_model(
        tiny_run.store, tiny_run.run, tiny_run.trained, _quick(suite, sft={"max_seq_length": 24})
    ).extra["suite"]
    dropped = record["dropped"]
    assert dropped["tool turns"] == 1 and dropped["non-text content (image_url)"] == 1
    assert any(k.startswith("train: answer starts beyond 24 tokens") for k in dropped)
    assert record["dropped_total"] == sum(dropped.values())
    assert record["cut_to_context"]["train"] + record["cut_to_context"]["valid"] >= 1


def test_gsm8k_suite_with_the_gsm8k_extractor(tiny_run: TinyRun) -> None:
    config = fast_eval_config(
        suite=str(SFT / "gsm8k.jsonl"),
        answer_extractor="gsm8k",
        sharpness={"enabled": False},
        pretrain_loss=False,
        max_new_tokens=4,
    )
    result = evaluate_model(tiny_run.store, tiny_run.run, tiny_run.trained, config)
    assert result.extra["suite"]["tasks"] == 2 and result.extra["suite"]["dropped_total"] == 0
    assert math.isfinite(result.metrics["sft_val_loss"]) and "task_accuracy/gsm8k" in result.metrics
    assert result.config["answer_extractor"] == "gsm8k"
