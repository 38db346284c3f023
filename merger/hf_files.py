"""The non-weight files that make a Hugging Face model directory loadable: config and tokenizer.

A merge of HF model directories writes only weights; without ``config.json`` and the tokenizer
files, transformers cannot load the result. Like mergekit's ``--copy-tokenizer``, the merge copies
them from one input (the newest: the last one given), so the output is a model directory again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from merger.formats import CheckpointLayout
from merger.formats.sources import is_remote, local_path

MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
"""What transformers reads besides the weights (whichever of them the source has)."""


def model_dir(ckpt: CheckpointLayout) -> str | None:
    """The local directory of a checkpoint given as a directory or as its weights file, else None."""
    if is_remote(ckpt.uri):
        return None
    path = local_path(ckpt.uri)
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def sidecar_files(inputs: Sequence[CheckpointLayout]) -> dict[str, str]:
    """``{name: path}`` of the HF model files of the newest input that has a ``config.json``; {} if none does."""
    for ckpt in reversed(inputs):
        directory = model_dir(ckpt)
        if directory and os.path.isfile(os.path.join(directory, "config.json")):
            found = {n: os.path.join(directory, n) for n in MODEL_FILES}
            return {n: p for n, p in found.items() if os.path.isfile(p)}
    return {}
