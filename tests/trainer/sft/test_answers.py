"""Task accuracy: answer extractors (GSM8K's ``####``, a regex), and prompts that do not fit the context."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.sft.conftest import micro_model
from trainer.generate import extract_answer, greedy_generate, score, task_accuracy
from trainer.sft_data import load_records
from trainer.sft_suite import TaskItem, builtin_suite
from trainer.tokenizer import EOD_TOKEN, eod_id, train_bpe
from wsm.eval_config import EvalConfig

SFT = Path(__file__).parents[1] / "fixtures" / "sft"


def _model(vocab: int, seq_length: int) -> torch.nn.Module:
    from trainer.config import ModelConfig
    from trainer.distributed import init_distributed
    from trainer.model import build_model

    init_distributed(1)
    cfg = ModelConfig(
        preset=None,
        num_layers=1,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        seq_length=seq_length,
    )
    model: torch.nn.Module = build_model(cfg, vocab, seed=0)
    return model.eval()


def test_gsm8k_extractor_on_gsm8k_references() -> None:
    answers = [r.messages[1].content for r in load_records(SFT / "gsm8k.jsonl")]
    assert extract_answer(answers[0], "gsm8k", reference=True) == "65"
    assert all(extract_answer(a, "gsm8k", reference=True) == a.rsplit("#### ", 1)[1] for a in answers)
    item = TaskItem("gsm8k", "q", answers[0])
    # The output's own "####", else its last number; thousands separators and ".0" do not matter.
    assert score("52 + 13 = 65\n#### 65", item, "gsm8k")
    assert score("So Ada has 65 apples.", item, "gsm8k")
    assert score("#### 65.0", item, "gsm8k")
    assert not score("#### 64", item, "gsm8k") and not score("no idea", item, "gsm8k")
    assert extract_answer("#### 1,234", "gsm8k") == "1234"
    # Whole-answer comparison (the default) says no to all of them.
    assert not score("So Ada has 65 apples.", item)


def test_regex_extractor() -> None:
    item = TaskItem("qa", "q", "The answer is Paris.")
    pattern = r"answer is (\w+)"
    assert score("I think the answer is Paris, surely.", item, "regex", pattern)
    assert not score("Paris", item, "regex", pattern)
    # A reference the pattern does not match is compared whole.
    assert score("so the answer is 42", TaskItem("qa", "q", "42"), "regex", pattern)
    assert extract_answer("x = 3", "regex", r"x = \d") == "x = 3"


def test_extractor_config_is_validated_and_torch_free() -> None:
    assert EvalConfig().answer_extractor == "whole"
    assert EvalConfig(answer_extractor="regex", answer_regex=r"(\d+)").answer_regex == r"(\d+)"
    with pytest.raises(ValueError, match="answer_regex"):
        EvalConfig(answer_extractor="regex")
    with pytest.raises(ValueError, match="not a regular expression"):
        EvalConfig(answer_extractor="regex", answer_regex="(")
    code = "import sys, wsm.eval_config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_builtin_suite_scores_exactly_as_before() -> None:
    """The default extractor keeps the per-task rules: exact, and loose for docstrings."""
    suite = builtin_suite(0, train_per_task=2, valid_per_task=2, doc_items=10)
    for it in suite.tasks:
        assert score(it.answer, it) and score(f" {it.answer} ", it)
        assert not score(it.answer + "x", it)
    doc = next(it for it in suite.tasks if it.task == "stdlib_doc")
    assert score(doc.answer.upper() + ".", doc)
    add = next(it for it in suite.tasks if it.task == "add")
    assert not score(f"The sum is {add.answer}", add)


def test_generation_stays_within_the_context(caplog: pytest.LogCaptureFixture) -> None:
    model = micro_model(seq_length=16).eval()
    kw: dict[str, Any] = {"stop_id": 127, "vocab_size": 100, "pad_id": 0, "device": torch.device("cpu")}
    [out] = greedy_generate(model, [[5, 6, 7, 8, 9, 10]], max_new_tokens=30, context=16, **kw)
    assert len(out) <= 10
    with pytest.raises(ValueError, match="context of 16"):
        greedy_generate(model, [list(range(1, 17))], max_new_tokens=4, context=16, **kw)

    tok = train_bpe(["what is one plus one? two. " * 50], 300)
    model = _model(tok.get_vocab_size(), seq_length=16)
    items = [TaskItem("t", "what is one plus one? " * 10, "two"), TaskItem("t", "one?", "two")]
    report: dict[str, int] = {}
    with caplog.at_level(logging.WARNING):
        acc, preds = task_accuracy(
            model,
            tok,
            items,
            eos=EOD_TOKEN,
            stop_id=eod_id(tok),
            vocab_size=tok.get_vocab_size(),
            pad_id=1,
            device=torch.device("cpu"),
            max_new_tokens=4,
            context=16,
            report=report,
        )
    assert report == {"prompts_cut": 1} and "1 of 2 task prompts" in caplog.text
    assert len(preds) == 2 and set(acc) == {"t", "all"}
