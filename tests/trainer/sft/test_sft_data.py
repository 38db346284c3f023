"""SFT data: both formats, multi-turn, malformed records reported by file and line, response-only loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from trainer.chat import CHAT_TEMPLATE, Message, render_text
from trainer.sft_data import SFTDataError, collate, encode, encode_all, load_records
from trainer.sft_suite import builtin_suite, path_suite
from trainer.tokenizer import EOD_TOKEN, train_bpe

EOS = EOD_TOKEN


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    docs = [
        "What is 3 + 4? The answer is 7. Reverse the letters: a b c -> c b a.\n" * 20,
        "<|user|>\n<|assistant|>\n def f(x): return x\n" * 20,
    ]
    return train_bpe(docs, 400)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_alpaca_jsonl_and_json(tmp_path: Path) -> None:
    recs = [{"instruction": "Add", "input": "3 4", "output": "7"}, {"instruction": "Say hi", "output": "hi"}]
    jl = load_records(_write(tmp_path / "a.jsonl", [json.dumps(r) for r in recs]))
    js = tmp_path / "a.json"
    js.write_text(json.dumps(recs, indent=2))
    arr = load_records(js)
    assert [c.messages for c in jl] == [c.messages for c in arr]
    assert jl[0].messages == (Message("user", "Add\n\n3 4"), Message("assistant", "7"))
    assert jl[1].messages[0].content == "Say hi"
    assert jl[1].source.endswith("a.jsonl:2")


def test_chat_multi_turn_has_loss_on_every_assistant_turn(tmp_path: Path, tok: Tokenizer) -> None:
    rec = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "3 + 4?"},
            {"role": "assistant", "content": "7"},
            {"role": "user", "content": "and 1 + 1?"},
            {"role": "assistant", "content": "2"},
        ]
    }
    [conv] = load_records(_write(tmp_path / "c.jsonl", [json.dumps(rec)]))
    ex = encode(tok, conv.messages, EOS)
    trained = [i for i, t in zip(ex.ids, ex.train, strict=True) if t]
    assert tok.decode(trained, skip_special_tokens=False) == f"7{EOS}2{EOS}"
    # Segments tokenise like the whole text, and the Jinja template renders the same string.
    assert list(ex.ids) == tok.encode(render_text(conv.messages, EOS), add_special_tokens=False).ids
    from jinja2 import Template

    jinja = Template(CHAT_TEMPLATE).render(
        messages=[{"role": m.role, "content": m.content} for m in conv.messages],
        eos_token=EOS,
        add_generation_prompt=False,
    )
    assert jinja == render_text(conv.messages, EOS)


def test_prompt_tokens_carry_no_loss(tok: Tokenizer) -> None:
    msgs = (Message("user", "Reverse the letters: a b c"), Message("assistant", "c b a"))
    ex = encode(tok, msgs, EOS)
    batch = collate([ex, encode(tok, (*msgs[:1], Message("assistant", "x")), EOS)], pad_id=0)
    mask, labels = batch["loss_mask"], batch["labels"]
    # Targets with loss are exactly the answer and its end token; every prompt target has mask 0.
    answer = tok.decode(labels[0][mask[0].bool()].tolist(), skip_special_tokens=False)
    assert answer == f"c b a{EOS}"
    prompt_len = len(encode(tok, msgs[:1], EOS, generation_prompt=True).ids)
    assert mask[0, : prompt_len - 1].sum() == 0
    # Padding of the shorter row has no loss either.
    assert mask[1].sum() == len(tok.encode(f"x{EOS}", add_special_tokens=False).ids)
    assert mask[1, int(mask[1].nonzero().max()) + 1 :].sum() == 0


def test_truncation_drops_records_without_answer_tokens(tok: Tokenizer) -> None:
    from trainer.sft_data import Conversation

    long = Conversation((Message("user", "word " * 200), Message("assistant", "ok")))
    short = Conversation((Message("user", "hi"), Message("assistant", "ok")))
    out = encode_all(tok, [long, short], EOS, max_length=32).examples
    assert len(out) == 1 and len(out[0].ids) <= 33


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        (['{"instruction": "a", "output": "b"}', "{not json"], 2, "invalid JSON"),
        (['{"instruction": "a", "output": "b"}', "", '{"messages": []}'], 3, "non-empty"),
        (['{"messages": [{"role": "user", "content": "q"}]}'], 1, "no assistant"),
        (['{"messages": [{"role": "robot", "content": "q"}]}'], 1, "role"),
        (['{"instruction": "a", "output": 3}'], 1, "string"),
        (['{"text": "plain"}'], 1, "not a known SFT record"),
        (["[1, 2]"], 1, "JSON object"),
    ],
)
def test_malformed_record_names_file_and_line(
    tmp_path: Path, lines: list[str], line: int, message: str
) -> None:
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(SFTDataError, match=message) as info:
        load_records(path)
    assert str(info.value).startswith(f"{path}:{line}:")


def test_malformed_record_in_json_array_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a"}\n]\n')
    with pytest.raises(SFTDataError, match=rf"^{path}:3:"):
        load_records(path)


def test_builtin_suite_is_deterministic_and_held_out_is_unseen() -> None:
    a, b = (
        builtin_suite(3, train_per_task=30, valid_per_task=5),
        builtin_suite(3, train_per_task=30, valid_per_task=5),
    )
    assert a.train == b.train and a.tasks == b.tasks
    assert builtin_suite(4, train_per_task=30, valid_per_task=5).train != a.train
    train_prompts = {m.content for c in a.train for m in c.messages if m.role == "user"}
    assert not train_prompts & {t.prompt for t in a.tasks}
    assert {t.task for t in a.tasks} >= {"add", "reverse", "sort", "count", "field", "stdlib_doc"}
    assert any(len(c.messages) == 4 for c in a.train)  # multi-turn records are in the mix


def test_path_suite_splits_a_file_nine_to_one(tmp_path: Path) -> None:
    recs = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(50)]
    suite = path_suite(_write(tmp_path / "mine.jsonl", recs), seed=1)
    assert (len(suite.train), len(suite.valid), len(suite.tasks)) == (45, 5, 5)
    assert path_suite(tmp_path / "mine.jsonl", seed=1).valid == suite.valid
