"""The data one evaluation reads: held-out pre-training sequences, the SFT suite tokenised, and the
batches sharpness is measured on.

Pre-training validation goes through the trainer's own data path (:mod:`trainer.data`) with the
run's recorded corpus, seed, sequence length and sample count and the run's stored tokenizer, so it
yields exactly the sequences the trainer validated on (megatron splits by document, and the
document order is fixed). A corpus this machine cannot read is reported in ``skipped`` instead of
failing the whole evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer

from trainer.config import DataConfig
from trainer.data import build_datasets, prepare_data
from trainer.engine import token_loss
from trainer.generate import task_accuracy
from trainer.load import StoredModel
from trainer.sft_data import Batch, Encoded, Example, encode_all
from trainer.sft_suite import TaskItem, load_suite
from trainer.tokenizer import eod_id, pad_id
from wsm.eval_config import SharpnessConfig

if TYPE_CHECKING:
    from wsm.eval_config import EvalConfig

log = logging.getLogger(__name__)

_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


@dataclass
class Prepared:
    """Tokenised evaluation data for one model's run."""

    tok: Tokenizer
    eos: str
    eod: int
    pad_id: int
    vocab_size: int
    suite_name: str
    sft_train: list[Example]
    sft_valid: list[Example]
    tasks: list[TaskItem]
    pretrain_valid: list[dict[str, torch.Tensor]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    context: int | None = None
    """The model's sequence length: generation never goes beyond it."""
    report: dict[str, Any] = field(default_factory=dict)
    """What the suite lost on the way (records dropped by reason, records and prompts cut), for the record."""

    @torch.no_grad()
    def pretrain_loss(self, model: torch.nn.Module, device: torch.device, batch_size: int) -> float:
        """Mean next-token loss over every held-out pre-training token."""
        model.eval()
        total, count = 0.0, 0.0
        for b in range(0, len(self.pretrain_valid), batch_size):
            items = self.pretrain_valid[b : b + batch_size]
            batch = {k: torch.stack([it[k] for it in items]) for k in _KEYS}
            n = float(batch["loss_mask"].sum())
            total += float(token_loss(model, batch, device)) * n
            count += n
        return total / count

    def sharpness_batches(self, where: str, cfg: SharpnessConfig, model_seq: int) -> list[Batch]:
        """``cfg.batches`` batches of ``cfg.batch_size`` sequences of ``min(cfg.seq_length, model_seq)`` tokens."""
        length = min(cfg.seq_length, model_seq)
        if where == "pretrain":
            seqs = [
                {k: it[k][:length] for k in _KEYS}
                for it in self.pretrain_valid[: cfg.batches * cfg.batch_size]
            ]
        else:
            seqs = pack(self.sft_valid, length, cfg.batches * cfg.batch_size)
        if not seqs:
            self.skipped[f"sharpness_{where}"] = "no held-out data"
            return []
        return [
            {k: torch.stack([s[k] for s in seqs[b : b + cfg.batch_size]]) for k in _KEYS}
            for b in range(0, len(seqs), cfg.batch_size)
        ]

    def score(
        self, model: torch.nn.Module, device: torch.device, cfg: EvalConfig
    ) -> tuple[dict[str, float], list[str]]:
        """Greedy accuracy on the held-out task items (whole answers or extracted ones, per ``cfg``)."""
        counts: dict[str, int] = {}
        out = task_accuracy(
            model,
            self.tok,
            self.tasks,
            eos=self.eos,
            stop_id=self.eod,
            vocab_size=self.vocab_size,
            pad_id=self.pad_id,
            device=device,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.eval_batch_size,
            context=self.context,
            extractor=cfg.answer_extractor,
            pattern=cfg.answer_regex,
            report=counts,
        )
        if counts.get("prompts_cut"):
            self.report["task_prompts_cut"] = counts["prompts_cut"]
        return out


def pack(examples: list[Example], length: int, count: int) -> list[dict[str, torch.Tensor]]:
    """Up to ``count`` sequences of ``length`` tokens cut from the concatenated examples (SFT masks kept).

    SFT records are short; packing gives sharpness the paper's full-length sequences on SFT data.
    """
    ids = [i for e in examples for i in e.ids]
    train = [t for e in examples for t in e.train]
    out: list[dict[str, Any]] = []
    for start in range(0, max(0, len(ids) - 1), length):
        if len(out) == count:
            break
        chunk, mask = ids[start : start + length + 1], train[start : start + length + 1]
        if len(chunk) < length + 1 and out:
            break  # a short tail would make this batch ragged; whole sequences only after the first
        out.append(
            {
                "tokens": torch.tensor(chunk[:-1]),
                "labels": torch.tensor(chunk[1:]),
                "loss_mask": torch.tensor(mask[1:], dtype=torch.float32),
                "position_ids": torch.arange(len(chunk) - 1),
            }
        )
    return out


def _data_config(sm: StoredModel) -> DataConfig:
    """The run's data section, with the stored tokenizer (same ids as training, no BPE retraining)."""
    stored: dict[str, Any] = dict((sm.run.schedule.get("config") or {}).get("data") or {})
    if not stored:
        stored = {
            "paths": sm.run.data.get("paths", ["builtin:stdlib"]),
            "builtin_max_bytes": sm.run.data.get("builtin_max_bytes"),
            "valid_fraction": sm.run.data.get("valid_fraction", 0.02),
        }
    # Runs recorded before text files were split into documents read each file as one document.
    stored.setdefault("text_split", "none")
    # The trainer's cache dir is a path on its machine; this machine uses its own.
    stored.pop("cache_dir", None)
    stored["tokenizer"] = str(sm.tokenizer_path)
    return DataConfig.model_validate(stored)


def pretrain_valid(sm: StoredModel, samples: int | None) -> list[dict[str, torch.Tensor]]:
    """The run's held-out pre-training sequences (empty without a held-out split)."""
    cfg = _data_config(sm)
    n = samples or cfg.valid_samples
    if cfg.valid_fraction <= 0 or n <= 0:
        return []
    seed = int(sm.run.data.get("seed", (sm.run.schedule.get("config") or {}).get("seed", 1234)))
    prepared = prepare_data(cfg)
    ds = build_datasets(
        prepared,
        seq_length=sm.model_cfg.seq_length,
        seed=seed,
        train_samples=1,
        valid_samples=n,
        valid_fraction=cfg.valid_fraction,
    ).valid
    if ds is None:
        return []
    return [{k: ds[i][k] for k in _KEYS} for i in range(min(n, len(ds)))]  # type: ignore[index, arg-type]


def suite_report(loaded: dict[str, int], train: Encoded, valid: Encoded) -> dict[str, Any]:
    """Records dropped (by reason: on loading, and per split on tokenising) and records cut to the context."""
    dropped: dict[str, int] = dict(loaded)
    for split, enc in (("train", train), ("valid", valid)):
        for reason, n in enc.dropped.items():
            dropped[f"{split}: {reason}"] = n
    out: dict[str, Any] = {"dropped": dropped, "dropped_total": sum(dropped.values())}
    if train.truncated or valid.truncated:
        out["cut_to_context"] = {"train": train.truncated, "valid": valid.truncated}
    return out


def prepare_eval_data(sm: StoredModel, config: EvalConfig) -> Prepared:
    """Tokenise the suite with the run's tokenizer and load the held-out pre-training split."""
    tok = sm.tokenizer()
    eod = eod_id(tok)
    eos = tok.id_to_token(eod)
    if eos is None:
        raise ValueError(f"the run's tokenizer has no token for its end-of-document id {eod}")
    pad = pad_id(tok)
    context = sm.model_cfg.seq_length
    max_len = config.sft.max_seq_length or context
    if max_len > context:
        log.warning(
            "sft.max_seq_length=%d is longer than the model's context of %d tokens: positions beyond it "
            "were never trained",
            max_len,
            context,
        )
    suite = load_suite(
        config.suite,
        config.suite_seed,
        train_per_task=config.builtin_train_per_task,
        valid_per_task=config.builtin_valid_per_task,
        doc_items=config.builtin_doc_items,
    )
    train, valid = encode_all(tok, suite.train, eos, max_len), encode_all(tok, suite.valid, eos, max_len)
    data = Prepared(
        tok=tok,
        eos=eos,
        eod=eod,
        pad_id=eod if pad is None else pad,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        suite_name=suite.name,
        sft_train=train.examples,
        sft_valid=valid.examples,
        tasks=suite.tasks,
        context=context,
        report=suite_report(suite.dropped, train, valid),
    )
    if config.pretrain_loss or "pretrain" in config.sharpness_on:
        try:
            data.pretrain_valid = pretrain_valid(sm, config.pretrain_valid_samples)
        except (OSError, ValueError) as exc:
            log.warning("no pre-training validation for %s: %s", sm.model_dir, exc)
            data.skipped["pretrain"] = str(exc)
        if not data.pretrain_valid and "pretrain" not in data.skipped:
            data.skipped["pretrain"] = "the run has no held-out split"
    return data
