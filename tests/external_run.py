"""An external Megatron-LM run for the bring-your-own-run tests, saved by megatron-core itself (cached).

Four ``iter_<7 digits>/`` checkpoints of the same tiny GPTModel, all bf16 and model-only (what a
window merges), at TP=1 in Megatron-LM's directory layout, plus the helpers the tests share:
copying part of the run (a run still training), megatron-core's own load as the reference, a
tiny tokenizer, and torch DCP's own load of the raw stacked tensors.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent / "merger" / "formats"))

import dcp_fixtures

ITERATIONS = (10, 20, 30, 40)
TOKENS_PER_ITERATION = dcp_fixtures.GLOBAL_BATCH * dcp_fixtures.TINY["seq_length"]


def _build(save_dir: Path) -> None:
    from trainer.distributed import init_distributed

    init_distributed(1)
    for iteration in ITERATIONS:
        dcp_fixtures.save_megatron_iteration(save_dir, iteration, tp=1, bf16=True, optimizer=False)


def megatron_run() -> Path:
    """The cached run directory (never modify it: copy with :func:`copy_run`)."""
    path: Path = dcp_fixtures.cached("megatron-tp1-bf16-x4", _build)
    return path


def copy_run(dst: Path, iterations: tuple[int, ...]) -> Path:
    """A run directory holding only ``iterations`` (as a run still training would)."""
    dst.mkdir(parents=True, exist_ok=True)
    src = megatron_run()
    for it in iterations:
        add_iteration(dst, it)
    shutil.copy(src / "latest_checkpointed_iteration.txt", dst / "latest_checkpointed_iteration.txt")
    return dst


def add_iteration(dst: Path, iteration: int) -> Path:
    name = f"iter_{iteration:07d}"
    return Path(shutil.copytree(megatron_run() / name, dst / name))


def reference_model(iter_dir: Path) -> Any:
    """A bf16 GPTModel loaded by megatron-core's own ``dist_checkpointing.load`` (the reference)."""
    from megatron.core import dist_checkpointing

    from trainer.config import ModelConfig
    from trainer.distributed import init_distributed
    from trainer.model import build_model

    init_distributed(1)
    model = build_model(ModelConfig(preset=None, **dcp_fixtures.TINY), dcp_fixtures.VOCAB, seed=0, bf16=True)
    # Megatron-LM saves the model's sharded state under "model", as the fixture does.
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(iter_dir))
    model.load_state_dict(loaded["model"])
    return model


def reference_params(iter_dir: Path) -> dict[str, torch.Tensor]:
    """Canonical name -> parameter of :func:`reference_model`."""
    from trainer.weights import named_parameters

    return {k: v.detach().clone() for k, v in named_parameters(reference_model(iter_dir)).items()}


def raw_tensors(iter_dir: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch DCP's own load of the stacked model tensors named in ``like`` (shapes and dtypes from it)."""
    from torch.distributed.checkpoint.state_dict_loader import load

    state = {k: torch.empty_like(v) for k, v in like.items()}
    load(state, checkpoint_id=str(iter_dir), no_dist=True)
    return state


def char_tokenizer(path: Path) -> Path:
    """A real Hugging Face ``tokenizer.json`` small enough for the fixture's 128-row embedding."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    specials = ["<|endoftext|>", "<|pad|>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    assert len(vocab) <= dcp_fixtures.VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.add_special_tokens(specials)
    tok.save(str(path))
    return path


def require_megatron_merge() -> None:
    """Skip unless the merge engine can write Megatron's SwiGLU ``linear_fc1`` (chunked along dim 1 too).

    The engine on some branches assembles only tensors chunked along dimension 0; this probe keeps
    the end-to-end tests honest there and runs them wherever the engine can.
    """
    import pytest

    from merger import plan_merge
    from merger.errors import MergeError

    try:
        plan_merge([str(megatron_run() / f"iter_{ITERATIONS[0]:07d}")], [1.0])
    except MergeError as e:
        if "sharded along a dimension other than the first" not in str(e):
            raise
        pytest.skip(f"this merge engine cannot write Megatron's SwiGLU fc1 yet: {e}")
