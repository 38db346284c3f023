"""Text -> tokenizer -> megatron indexed dataset (.bin/.idx) -> ``GPTDataset`` samples, cached by content.

Preparation reads every document once (jsonl/json ``text`` field, plain text files cut into
documents by :mod:`trainer.textsplit`, parquet when pyarrow is importable, or the built-in stdlib
corpus), hashes the text, and keys the cache directory by that hash and the tokenizer choice; a
complete cache entry has ``meta.json`` (written last), so a killed build is simply redone. Documents are written in a fixed pseudo-random
order so megatron's by-document validation split is a random sample, not the alphabetically last files.

Sampling: sample ``i`` of the run is ``train[i]``; optimizer step ``s`` consumes samples
``s*G .. s*G+G-1`` (G = global batch), each data-parallel rank a contiguous slice. The order is a
pure function of (corpus, seed, seq_length, sample horizon), so a resumed run or a decay branch
sees exactly the batches of the original run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.config import DataConfig
from trainer.corpus import BUILTIN_PREFIX, iter_builtin
from trainer.textsplit import split_text
from trainer.tokenizer import ROLE_TOKENS, MegatronTokenizerAdapter, eod_id, load_tokenizer, train_bpe

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class PreparedData:
    """A built cache entry: tokenizer + indexed dataset of the whole corpus."""

    directory: str
    tokenizer_path: str
    prefix: str
    fingerprint: str
    vocab_size: int
    eod: int
    num_documents: int
    num_tokens: int

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _expand(path: str) -> list[Path]:
    if path.startswith(BUILTIN_PREFIX):
        return []
    p = Path(path).expanduser()
    if p.is_dir():
        return sorted(
            q
            for q in p.rglob("*")
            if q.is_file() and q.suffix in (*_TEXT_SUFFIXES, *_JSON_SUFFIXES, ".parquet")
        )
    matches = sorted(Path(m) for m in glob.glob(str(p)))
    if not matches:
        raise ValueError(f"data path {path!r} matches no file")
    return matches


def _iter_file(path: Path, cfg: DataConfig) -> Iterator[str]:
    text_field = cfg.text_field
    if path.suffix in _JSON_SUFFIXES:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[text_field]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(
                        f"{path}:{lineno}: expected a JSON object with a {text_field!r} field"
                    ) from exc
                if isinstance(text, str) and text:
                    yield text
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from exc
        table = pq.ParquetFile(str(path))
        if text_field not in table.schema_arrow.names:
            raise ValueError(f"{path}: parquet file has no column {text_field!r}")
        for batch in table.iter_batches(columns=[text_field]):
            yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str) and t)
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
        yield from split_text(
            text, cfg.text_split, separator=cfg.text_separator, max_chars=cfg.text_doc_chars
        )


def iter_documents(cfg: DataConfig) -> Iterator[str]:
    """All documents of the configured sources, in a deterministic order."""
    for source in cfg.paths:
        if source.startswith(BUILTIN_PREFIX):
            yield from iter_builtin(source[len(BUILTIN_PREFIX) :], cfg.builtin_max_bytes)
            continue
        for path in _expand(source):
            yield from _iter_file(path, cfg)


def _fingerprint(cfg: DataConfig) -> tuple[str, list[str]]:
    """Content hash of the corpus and tokenizer choice, plus the documents (read once, kept for the build)."""
    digest = hashlib.sha256(f"wsm-data-v{FORMAT_VERSION}".encode())
    docs = []
    for doc in iter_documents(cfg):
        data = doc.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        docs.append(doc)
    if not docs:
        raise ValueError(f"data.paths {cfg.paths} yielded no documents")
    if cfg.tokenizer:
        digest.update(hashlib.sha256(Path(cfg.tokenizer).expanduser().read_bytes()).digest())
    else:
        # The trained BPE's special tokens are part of the choice (it gained the role markers).
        digest.update(f"bpe:{cfg.vocab_size}:{','.join(ROLE_TOKENS)}".encode())
    return digest.hexdigest()[:24], docs


def _build(docs: list[str], cfg: DataConfig, target: Path, fingerprint: str) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    staging = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    start = time.perf_counter()
    tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else train_bpe(docs, cfg.vocab_size)
    tok.save(str(staging / "tokenizer.json"))
    eod = eod_id(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = np.uint16 if vocab <= 65535 else np.int32
    order = np.random.default_rng(0).permutation(len(docs))
    builder = IndexedDatasetBuilder(str(staging / "text_document.bin"), dtype=dtype)
    num_tokens = 0
    chunk = 256
    for begin in range(0, len(order), chunk):
        batch = [docs[i] for i in order[begin : begin + chunk]]
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            ids = np.asarray([*enc.ids, eod], dtype=np.int64)
            num_tokens += ids.size
            builder.add_item(torch.from_numpy(ids))
            builder.end_document()
    builder.finalize(str(staging / "text_document.idx"))
    meta = PreparedData(
        directory=str(target),
        tokenizer_path=str(target / "tokenizer.json"),
        prefix=str(target / "text_document"),
        fingerprint=fingerprint,
        vocab_size=vocab,
        eod=eod,
        num_documents=len(docs),
        num_tokens=num_tokens,
    )
    (staging / "meta.json").write_text(json.dumps(meta.to_json(), indent=1))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    log.info(
        "built dataset %s: %d documents, %d tokens, vocab %d in %.1fs",
        fingerprint,
        len(docs),
        num_tokens,
        vocab,
        time.perf_counter() - start,
    )


def prepare_data(cfg: DataConfig) -> PreparedData:
    """The cached tokenizer + indexed dataset for ``cfg``, building it if absent (call on one rank)."""
    fingerprint, docs = _fingerprint(cfg)
    target = Path(cfg.cache_dir).expanduser() / "data" / fingerprint
    meta_path = target / "meta.json"
    if not meta_path.is_file():
        _build(docs, cfg, target, fingerprint)
    else:
        log.info("using cached dataset %s", target)
    meta = json.loads(meta_path.read_text())
    # The cache may have been copied elsewhere: paths follow the directory actually used.
    meta.update(
        directory=str(target),
        tokenizer_path=str(target / "tokenizer.json"),
        prefix=str(target / "text_document"),
    )
    return PreparedData(**meta)


@dataclass
class Datasets:
    """megatron GPTDatasets of one run; ``valid`` is None without a held-out split."""

    train: object
    valid: object | None
    train_samples: int


def build_datasets(
    prepared: PreparedData,
    *,
    seq_length: int,
    seed: int,
    train_samples: int,
    valid_samples: int,
    valid_fraction: float,
) -> Datasets:
    """GPTDatasets via BlendedMegatronDatasetBuilder; the shuffle depends on every argument here."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    tok = MegatronTokenizerAdapter(load_tokenizer(prepared.tokenizer_path), prepared.fingerprint)
    split = f"{1.0 - valid_fraction},{valid_fraction},0" if valid_fraction > 0 else "1,0,0"
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=([prepared.prefix], None),
        split=split,
        path_to_cache=str(Path(prepared.directory) / "index-cache"),
        tokenizer=tok,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mmap_bin_files=True,
    )
    valid_n = valid_samples if valid_fraction > 0 and valid_samples > 0 else 0
    n_docs = prepared.num_documents
    # megatron splits by document at round(fraction × N) and would loop forever on an empty split.
    valid_docs = _held_out(valid_fraction, n_docs)
    if valid_n and valid_docs < 1:
        raise ValueError(no_validation_document(valid_fraction, n_docs))
    if n_docs - valid_docs < 1:
        raise ValueError(f"the corpus has {n_docs} document(s): nothing left for training")
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_n or None, None], lambda: True, config
    ).build()
    if train is None:
        raise ValueError("the corpus is too small to build a training set")
    return Datasets(train=train, valid=valid if valid_n else None, train_samples=len(train))


def _held_out(fraction: float, n_docs: int) -> int:
    # megatron's split: the first round((1 - fraction) × N) documents train, the rest validate.
    return n_docs - round((1.0 - fraction) * n_docs)


def no_validation_document(valid_fraction: float, n_docs: int) -> str:
    """Why no document is held out, and settings that would hold one out (or skip validation)."""
    fixes = []
    workable = next(
        (f for f in (k / 1000 for k in range(5, 500, 5)) if 1 <= _held_out(f, n_docs) < n_docs), None
    )
    if workable is not None:
        fixes.append(f"set data.valid_fraction={workable:g} or more")
    fixes += [
        "split plain-text files into more documents (a smaller data.text_doc_chars, or "
        "data.text_split=separator with data.text_separator)",
        "add data files",
        "train without validation (data.valid_samples=0)",
    ]
    return f"data.valid_fraction={valid_fraction} holds out no document of {n_docs}: " + "; or ".join(fixes)


def epoch_samples(prepared: PreparedData, seq_length: int, valid_fraction: float) -> int:
    """About how many training sequences one pass over the corpus yields."""
    return max(1, int(prepared.num_tokens * (1.0 - valid_fraction)) // seq_length)


class BatchSource:
    """Deterministic micro-batches addressed by (step, micro-batch, data-parallel rank)."""

    def __init__(
        self, dataset: object, *, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int
    ) -> None:
        if global_batch % (micro_batch * dp_size):
            raise ValueError(
                f"global_batch_size={global_batch} must be a multiple of micro_batch_size × data-parallel "
                f"size = {micro_batch} × {dp_size}"
            )
        self.dataset = dataset
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.dp_rank = dp_rank
        self.per_rank = global_batch // dp_size
        self.num_micro = self.per_rank // micro_batch
        self._wrapped_warned = False

    def sample_indices(self, step: int, micro: int) -> list[int]:
        """Indices into the dataset of optimizer step ``step`` (0-based), micro-batch ``micro``, this rank."""
        first = step * self.global_batch + self.dp_rank * self.per_rank + micro * self.micro_batch
        n = len(self.dataset)  # type: ignore[arg-type]
        if first + self.micro_batch > n and not self._wrapped_warned:
            log.warning(
                "training passed the prepared sample horizon (%d); reusing the order from the start", n
            )
            self._wrapped_warned = True
        return [(first + j) % n for j in range(self.micro_batch)]

    def get(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        items = [self.dataset[i] for i in self.sample_indices(step, micro)]  # type: ignore[index]
        return {
            k: torch.stack([it[k] for it in items]) for k in ("tokens", "labels", "loss_mask", "position_ids")
        }
