"""Plain-text corpora: files become documents (blank lines, a marker, size), so one-file corpora validate."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer.config import DataConfig, load_config
from trainer.data import build_datasets, iter_documents, no_validation_document, prepare_data
from trainer.textsplit import split_text

FIXTURES = Path(__file__).parent / "fixtures"
PLAY = FIXTURES / "play.txt"


def test_blank_lines_pack_paragraphs_into_exact_pieces_of_the_file() -> None:
    text = PLAY.read_text()
    docs = split_text(text, "blank_lines", max_chars=400)
    assert len(docs) > 5 and all(len(d) <= 400 for d in docs)
    # Exact substrings, in order, covering every paragraph: nothing invented, nothing lost.
    pos = 0
    for d in docs:
        found = text.index(d, pos)
        assert not text[pos:found].strip(), "a paragraph went missing between documents"
        pos = found + len(d)
    assert not text[pos:].strip()
    # Packed: two neighbouring documents together would exceed the limit.
    assert all(len(a) + len(b) + 2 > 400 for a, b in itertools.pairwise(docs))
    # A file smaller than the limit stays one document.
    assert split_text(text, "blank_lines", max_chars=10_000) == [text]


def test_other_modes() -> None:
    text = "first doc\n<|endoftext|>\nsecond doc\n<|endoftext|>\n\n"
    assert split_text(text, "separator", separator="<|endoftext|>") == ["first doc", "second doc"]
    assert split_text(text, "none") == [text]
    long_line = "x" * 1000
    pieces = split_text(long_line, "chars", max_chars=300)
    assert [len(p) for p in pieces] == [300, 300, 300, 100]
    lines = "".join(f"line {i:03d}\n" for i in range(100))  # 9 characters a line
    pieces = split_text(lines, "chars", max_chars=100)
    assert "".join(pieces) == lines and all(p.endswith("\n") for p in pieces)
    # A paragraph longer than the limit is cut by size, not kept whole.
    assert len(split_text(long_line, "blank_lines", max_chars=300)) == 4
    with pytest.raises(ValueError, match=r"needs data\.text_separator"):
        DataConfig(text_split="separator")


def test_single_text_file_corpus_trains_with_a_validation_split(tmp_path: Path) -> None:
    """A Tiny-Shakespeare-like corpus (one ~120 kB file) with default splitting and valid_fraction."""
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join([PLAY.read_text()] * 48))
    cfg = DataConfig(paths=[str(book)], vocab_size=300, cache_dir=str(tmp_path / "cache"))
    assert cfg.valid_fraction == 0.02 and cfg.text_split == "blank_lines"
    docs = list(iter_documents(cfg))
    assert len(docs) >= 25 and max(len(d) for d in docs) <= cfg.text_doc_chars
    prepared = prepare_data(cfg)
    assert prepared.num_documents == len(docs)
    ds = build_datasets(
        prepared, seq_length=32, seed=1, train_samples=20, valid_samples=4, valid_fraction=cfg.valid_fraction
    )
    assert ds.valid is not None and len(ds.valid) >= 4  # type: ignore[arg-type]
    # Each file as one document (the old behaviour) is still available, and names what works instead.
    whole = cfg.model_copy(update={"text_split": "none"})
    one = prepare_data(whole)
    assert one.num_documents == 1
    with pytest.raises(ValueError, match=r"text_doc_chars.*valid_samples=0"):
        build_datasets(one, seq_length=32, seed=1, train_samples=20, valid_samples=4, valid_fraction=0.02)


@pytest.mark.parametrize("n_docs", [3, 10, 40])
def test_suggested_valid_fraction_holds_out_a_document(tmp_path: Path, n_docs: int) -> None:
    message = no_validation_document(0.02, n_docs)
    suggested = float(message.split("data.valid_fraction=")[2].split()[0])
    cfg = DataConfig(paths=[str(tmp_path)], valid_fraction=suggested)
    held_out = n_docs - round((1 - cfg.valid_fraction) * n_docs)
    assert 1 <= held_out < n_docs
    assert "valid_samples=0" in message


def test_config_keys_are_documented_and_set_from_the_command_line() -> None:
    cfg = load_config(None, ["data.text_split=separator", 'data.text_separator="\\n---\\n"'])
    assert cfg.data.text_separator == "\n---\n"
    assert load_config(None, ["data.text_doc_chars=800"]).data.text_doc_chars == 800
    with pytest.raises(ValueError, match="text_split"):
        load_config(None, ["data.text_split=lines"])


def test_runs_recorded_before_splitting_keep_one_document_per_file() -> None:
    from trainer.eval_data import _data_config

    def run(config: dict[str, object]) -> SimpleNamespace:
        return SimpleNamespace(
            run=SimpleNamespace(schedule={"config": {"data": config}}, data={}),
            tokenizer_path="/x/tokenizer.json",
        )

    old = _data_config(run({"paths": ["a.txt"], "valid_fraction": 0.1}))  # type: ignore[arg-type]
    assert old.text_split == "none" and old.tokenizer == "/x/tokenizer.json"
    new = _data_config(run(DataConfig(paths=["a.txt"]).model_dump()))  # type: ignore[arg-type]
    assert new.text_split == "blank_lines"
