"""Tokenizers: train a byte-level BPE on the corpus with HF ``tokenizers``, or load a ``tokenizer.json``.

The same ``tokenizer.json`` is stored with the run, so evaluation and export use exactly the
training tokenizer. :class:`MegatronTokenizerAdapter` is the small surface megatron's
``GPTDataset`` needs (vocab_size, eod, pad, unique_identifiers); going through megatron's own
``MegatronTokenizer`` would require writing a transformers tokenizer directory first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# The chat template's role markers (trainer.chat): single special tokens, so a conversation's
# structure is never spelled by ordinary text and decoders can skip it.
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# End-of-document tokens of common tokenizers, in order of preference.
_EOD_CANDIDATES = (EOD_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")


def train_bpe(documents: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenisation) with ``<|endoftext|>``, ``<|pad|>`` and the chat
    role markers as special tokens (ids 0-4, inside ``vocab_size``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOD_TOKEN, PAD_TOKEN, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a Hugging Face ``tokenizer.json``; a clear error if it is missing or not one."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ValueError(f"tokenizer file not found: {p}")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ValueError(f"{p}: not a Hugging Face tokenizer.json ({exc})") from exc


def eod_id(tok: Tokenizer) -> int:
    """The end-of-document token separating documents in the packed stream."""
    for token in _EOD_CANDIDATES:
        idx = tok.token_to_id(token)
        if idx is not None:
            return int(idx)
    raise ValueError(f"tokenizer has no end-of-document token (looked for {', '.join(_EOD_CANDIDATES)})")


def pad_id(tok: Tokenizer) -> int | None:
    """A dedicated pad token if the tokenizer has one (never a real text token)."""
    idx = tok.token_to_id(PAD_TOKEN)
    return None if idx is None else int(idx)


class MegatronTokenizerAdapter:
    """What megatron's GPTDataset reads from a tokenizer; ``unique_identifiers`` enters its cache key."""

    def __init__(self, tok: Tokenizer, fingerprint: str) -> None:
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.eod = eod_id(tok)
        # Without a dedicated pad token megatron falls back to its own out-of-vocabulary pad id.
        self.pad = pad_id(tok) if pad_id(tok) is not None else -1
        self.unique_identifiers: dict[str, Any] = {"class": "wsm-bpe", "fingerprint": fingerprint}


def role_tokens(tok: Tokenizer) -> list[str]:
    """The role markers that are single special tokens of ``tok`` (all of them for runs trained by wsm
    since they were added; none for older or outside tokenizers, which spell them as text)."""
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    return [t for t in ROLE_TOKENS if t in specials]


def hf_tokenizer(path: str | Path) -> Any:
    """A ``transformers.PreTrainedTokenizerFast`` of a stored ``tokenizer.json`` (for SFT, eval, export);
    the role markers it has are registered as additional special tokens."""
    from transformers import PreTrainedTokenizerFast

    tok = load_tokenizer(path)
    eod = tok.id_to_token(eod_id(tok))
    pad = PAD_TOKEN if pad_id(tok) is not None else eod
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token=eod,
        bos_token=eod,
        pad_token=pad,
        additional_special_tokens=role_tokens(tok),
    )
