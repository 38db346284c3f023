"""Corpus, tokenizer and dataset preparation: formats, determinism, caching, batch addressing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from trainer.config import DataConfig
from trainer.corpus import iter_stdlib_documents, stdlib_files
from trainer.data import BatchSource, build_datasets, iter_documents, prepare_data


def test_builtin_corpus_is_deterministic_and_bounded() -> None:
    files = stdlib_files()
    assert len(files) > 100 and files == stdlib_files()
    assert not any("site-packages" in p.parts or "test" in p.parts for p in files)
    docs = list(iter_stdlib_documents(max_bytes=200_000))
    assert docs == list(iter_stdlib_documents(max_bytes=200_000))
    assert 200_000 <= sum(len(d.encode()) for d in docs) < 200_000 + max(len(d.encode()) for d in docs)


def test_jsonl_and_text_sources(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i} " * 50}) for i in range(40)))
    (src / "b.txt").write_text("plain text document " * 100)
    cfg = DataConfig(paths=[str(src)], vocab_size=300, cache_dir=str(tmp_path / "cache"), valid_fraction=0.1)
    assert len(list(iter_documents(cfg))) == 41
    first = prepare_data(cfg)
    meta = Path(first.directory) / "meta.json"
    stamp = meta.stat().st_mtime_ns
    second = prepare_data(cfg)  # cache hit: nothing rebuilt
    assert second == first and meta.stat().st_mtime_ns == stamp
    assert first.num_documents == 41 and first.vocab_size <= 300
    ds = build_datasets(first, seq_length=32, seed=1, train_samples=50, valid_samples=4, valid_fraction=0.1)
    assert ds.valid is not None and len(ds.train) >= 50  # type: ignore[arg-type]


def test_bad_inputs_have_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="'text' field"):
        list(iter_documents(DataConfig(paths=[str(tmp_path / "bad.jsonl")])))
    with pytest.raises(ValueError, match="matches no file"):
        list(iter_documents(DataConfig(paths=[str(tmp_path / "missing*.txt")])))
    if importlib.util.find_spec("pyarrow") is None:
        (tmp_path / "x.parquet").write_bytes(b"PAR1")
        with pytest.raises(ValueError, match="needs pyarrow"):
            list(iter_documents(DataConfig(paths=[str(tmp_path / "x.parquet")])))


def test_batches_are_addressed_by_step_and_split_across_ranks() -> None:
    data = list(range(1000))
    single = BatchSource(data, global_batch=8, micro_batch=2, dp_rank=0, dp_size=1)
    ranks = [BatchSource(data, global_batch=8, micro_batch=2, dp_rank=r, dp_size=2) for r in range(2)]
    step = 7
    whole = [i for m in range(4) for i in single.sample_indices(step, m)]
    split = [i for r in ranks for m in range(2) for i in r.sample_indices(step, m)]
    assert whole == split == list(range(56, 64))
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        BatchSource(data, global_batch=6, micro_batch=2, dp_rank=0, dp_size=2)
