"""SFT formats people bring: LIMA (with history), typed content parts, ShareGPT, question/answer (GSM8K);
records a text model cannot use are dropped and counted, bad records in one-line arrays named by index."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from trainer.chat import Message
from trainer.sft_data import Conversation, SFTDataError, encode_all, load_records, read_records
from trainer.sft_suite import path_suite
from trainer.tokenizer import EOD_TOKEN, train_bpe

SFT = Path(__file__).parents[1] / "fixtures" / "sft"


def _roles(conv: Conversation) -> list[str]:
    return [m.role for m in conv.messages]


def test_lima_history_becomes_earlier_turns() -> None:
    first, plain, system, one = load_records(SFT / "lima.json")
    assert _roles(first) == ["user", "assistant"] * 3
    assert first.messages[0] == Message("user", "How deep should I plant tomato seedlings?")
    assert first.messages[3].content.startswith("Deeply about twice a week")
    assert first.messages[4] == Message("user", "And what should I plant next to them?")
    assert _roles(plain) == ["user", "assistant"]
    assert system.messages[0] == Message("system", "You are a careful translator.")
    assert system.messages[1].content == "Translate to French.\n\nThe library opens at nine."
    assert len(one.messages) == 4


def test_lima_original_conversations_alternate() -> None:
    recs = load_records(SFT / "lima_conversations.jsonl")
    assert [_roles(r) for r in recs] == [
        ["user", "assistant"],
        ["user", "assistant", "user", "assistant"],
        ["user", "assistant"],
    ]
    assert recs[1].messages[3].content == "Sir Reginald Fluffington."


def test_typed_content_parts_and_non_text_records_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = read_records(SFT / "messages_parts.jsonl")
    first, lower, times = loaded.conversations
    assert first.messages == (
        Message("user", "Name a prime number\nlarger than 10."),
        Message("assistant", "11"),
    )
    assert (
        _roles(lower) == ["system", "user", "assistant"]
        and lower.messages[1].content == "Spell the word CAT."
    )
    assert times.messages[1] == Message("assistant", "42")
    assert loaded.dropped == {"non-text content (image_url)": 1}
    assert "messages_parts.jsonl:3" in caplog.text


def test_sharegpt_roles_system_and_tool_turns() -> None:
    loaded = read_records(SFT / "sharegpt.json")
    plain, multi, concise = loaded.conversations
    assert plain.messages == (
        Message("user", "What is the capital of Australia?"),
        Message("assistant", "Canberra."),
    )
    assert _roles(multi) == ["system", "user", "assistant", "user", "assistant"]
    assert concise.messages[0] == Message("system", "Be concise.")
    assert loaded.dropped == {"tool turns": 1}


def test_question_answer_records() -> None:
    recs = load_records(SFT / "gsm8k.jsonl")
    assert len(recs) == 20 and all(_roles(r) == ["user", "assistant"] for r in recs)
    assert recs[0].messages[0].content.startswith("Ada has")
    assert recs[0].messages[1].content.endswith("#### 65")


def test_bad_record_in_a_one_line_array_is_named_by_index() -> None:
    with pytest.raises(SFTDataError, match=r"one_line\.json:1: record \[3\]: Alpaca records need"):
        load_records(SFT / "one_line.json")


def test_invalid_json_in_a_one_line_array_is_named_by_index(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"question": "a", "answer": "b"}, {"question": "c", "answer": }]')
    with pytest.raises(SFTDataError, match=r"broken\.json:1: record \[1\]: invalid JSON"):
        load_records(path)


def test_json_lines_in_a_json_file(tmp_path: Path) -> None:
    """What ``datasets.Dataset.to_json`` writes: one record per line under a .json name."""
    path = tmp_path / "gsm8k.json"
    path.write_text((SFT / "gsm8k.jsonl").read_text())
    recs = load_records(path)
    assert [r.messages for r in recs] == [r.messages for r in load_records(SFT / "gsm8k.jsonl")]
    assert recs[4].source == f"{path}:5"


def test_unknown_speaker_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "narrator", "value": "x"}]}) + "\n")
    with pytest.raises(SFTDataError, match=r"odd\.jsonl:1: conversations\[0\] needs 'from' in .*'narrator'"):
        load_records(path)


def test_drops_and_cuts_to_the_context_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    tok: Tokenizer = train_bpe(["some words for a tiny vocabulary, again and again. " * 40], 300)
    long_prompt = Conversation((Message("user", "word " * 200), Message("assistant", "ok")))
    long_answer = Conversation((Message("user", "hi"), Message("assistant", "yes " * 200)))
    short = Conversation((Message("user", "hi"), Message("assistant", "ok")))
    with caplog.at_level(logging.WARNING):
        enc = encode_all(tok, [long_prompt, long_answer, short], EOD_TOKEN, max_length=32)
    assert len(enc.examples) == 2 and all(len(e.ids) <= 33 for e in enc.examples)
    assert enc.dropped == {"answer starts beyond 32 tokens": 1}
    assert enc.truncated == 1
    assert "longer than 32 tokens and were cut" in caplog.text and "dropped 1 of 3" in caplog.text


def test_path_suite_carries_the_drop_counts(tmp_path: Path) -> None:
    suite = path_suite(SFT / "sharegpt.json", valid_fraction=0.34)
    assert suite.dropped == {"tool turns": 1}
    assert len(suite.train) + len(suite.valid) == 3


def test_text_after_a_json_array_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    path.write_text('[{"question": "a", "answer": "b"}]\n[{"question": "c", "answer": "d"}]\n')
    with pytest.raises(SFTDataError, match=r"two\.jsonl:1: text after the end of the JSON array"):
        load_records(path)


def test_one_pretty_printed_object_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"data": [{"question": "a", "answer": "b"}]}, indent=2))
    with pytest.raises(SFTDataError, match=r"obj\.json:1: one JSON document spread over lines"):
        load_records(path)
    odd = tmp_path / "odd_role.jsonl"
    odd.write_text(json.dumps({"messages": [{"role": ["user"], "content": "x"}]}) + "\n")
    with pytest.raises(SFTDataError, match=r"odd_role\.jsonl:1: messages\[0\] needs 'role'"):
        load_records(odd)
