"""A Hugging Face Llama directory (a ``wsm export``, a mergekit output) as a model wsm can evaluate or export.

On the command line such a directory is named by its path; inside the trainer its model dir is
``hf:<absolute path>`` (:data:`PREFIX`), which is also the ``model_id`` of its evaluation records.
It is read in the context of a store run, whose held-out data, tokenizer and pre-training LR the
evaluation uses: ``--run RUN``, or the run a ``wsm export`` recorded as ``wsm_run`` in
``config.json`` (mergekit keeps the base model's config, and with it that key).

What is accepted is what ``wsm export`` writes and what Llama-shaped tools produce from it: a
``LlamaForCausalLM`` config (SiLU, no biases, no RoPE scaling, head dim = hidden / heads) with
``model.safetensors`` or safetensors shards with their index. Anything else is refused with one
line naming the field. Weights are read into megatron's local-spec names, the inverse of
:func:`trainer.export.to_hf_state_dict`; every file is hashed on open (the evaluation cache key),
and a file that changed since (inode, size or mtime) is refused when it is read. The megatron model gets exactly the HF
vocabulary (no padded rows), so it computes what the HF model computes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from trainer.config import ModelConfig
from wsm.store.names import OUTSIDE_MODEL_PREFIX

log = logging.getLogger(__name__)

PREFIX = OUTSIDE_MODEL_PREFIX
CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
RUN_KEY = "wsm_run"
"""``config.json`` key in which ``wsm export`` records the run an export came from."""

_ARCHITECTURE = "LlamaForCausalLM"
_IGNORED = ("rotary_emb.inv_freq",)  # buffers some older writers saved; recomputed by every reader


@dataclass(frozen=True)
class WeightsFile:
    """One safetensors file of the directory, as hashed when the directory was opened."""

    name: str
    sha256: str
    size: int
    identity: tuple[int, int, int]
    """``(inode, size, mtime_ns)`` when hashed: a file with another identity has changed since."""


@dataclass(frozen=True)
class HFModelDir:
    """An opened, validated Hugging Face Llama directory."""

    path: Path
    """Absolute path of the directory."""
    config: dict[str, Any]
    """Its ``config.json``."""
    model_cfg: ModelConfig
    """The megatron shape; ``seq_length`` is the config's ``max_position_embeddings``."""
    vocab_size: int
    """Embedding rows (the config's ``vocab_size``)."""
    files: tuple[WeightsFile, ...]

    @property
    def dir(self) -> str:
        """The model dir wsm knows it by: ``hf:<absolute path>``."""
        return PREFIX + str(self.path)

    @property
    def weight_sha256(self) -> list[str]:
        return [f.sha256 for f in self.files]

    @property
    def run_hint(self) -> str | None:
        """The run a ``wsm export`` recorded, if any."""
        value = self.config.get(RUN_KEY)
        return value if isinstance(value, str) and value else None


def is_model_dir(model_dir: str) -> bool:
    """Whether a model dir names a Hugging Face directory (``hf:<path>``) rather than a store directory."""
    return model_dir.startswith(PREFIX)


def looks_like_hf_dir(spec: str) -> bool:
    """Whether a command-line MODEL argument is a local directory rather than a store spec.

    A directory with a ``config.json``, or any existing directory named as a path (``./x``, ``/x``,
    ``~/x``): the latter is then refused by :func:`open_hf_dir` with what it lacks.
    """
    path = Path(spec).expanduser()
    if not path.is_dir():
        return False
    return (path / CONFIG_FILE).is_file() or spec.startswith(("/", "./", "../", "~"))


def open_hf_dir(path: str | Path) -> HFModelDir:
    """Validate a Hugging Face Llama directory and hash its weights; ValueError naming the problem."""
    root = Path(str(path).removeprefix(PREFIX)).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"{root}: no such model directory")
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{root}: not a Hugging Face model directory (no {CONFIG_FILE})")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: not a JSON object")
    model_cfg, vocab = model_config(config, str(config_path))
    files = tuple(_hash(root, name) for name in weight_files(root))
    return HFModelDir(root, config, model_cfg, vocab, files)


def model_config(config: dict[str, Any], where: str) -> tuple[ModelConfig, int]:
    """``(ModelConfig, vocab_size)`` of a Llama ``config.json``; ValueError naming what wsm cannot build."""
    architectures = config.get("architectures") or []
    if _ARCHITECTURE not in architectures and config.get("model_type") != "llama":
        found = ", ".join(map(str, architectures)) or config.get("model_type") or "none"
        raise ValueError(f"{where}: architecture {found}; wsm reads {_ARCHITECTURE} models only")
    unsupported = {
        "hidden_act": (config.get("hidden_act", "silu"), "silu"),
        "attention_bias": (bool(config.get("attention_bias", False)), False),
        "mlp_bias": (bool(config.get("mlp_bias", False)), False),
    }
    for key, (value, wanted) in unsupported.items():
        if value != wanted:
            raise ValueError(f"{where}: {key}={value!r} is not supported (wsm's GPT has {key}={wanted!r})")
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling:
        raise ValueError(f"{where}: RoPE scaling {scaling} is not supported")
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or hidden // heads)
        if head_dim * heads != hidden:
            raise ValueError(f"{where}: head_dim={head_dim} x {heads} heads != hidden_size={hidden}")
        cfg = ModelConfig(
            preset=None,
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            ffn_hidden_size=int(config["intermediate_size"]),
            num_attention_heads=heads,
            num_query_groups=int(config.get("num_key_value_heads") or heads),
            seq_length=int(config["max_position_embeddings"]),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            rotary_base=int(config.get("rope_theta") or rope.get("rope_theta") or 10000),
            norm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
        )
        return cfg, int(config["vocab_size"])
    except KeyError as exc:
        raise ValueError(f"{where}: missing {exc.args[0]}") from None
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"{where}: {str(exc).splitlines()[0]}") from None


def weight_files(root: Path) -> list[str]:
    """The safetensors files holding the weights: the index's shards, or the one ``model.safetensors``."""
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index}: not a safetensors index ({exc})") from None
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise ValueError(f"{index} lists {missing[0]}, which is not in {root}")
        return names
    if (root / "model.safetensors").is_file():
        return ["model.safetensors"]
    if any(root.glob("*.bin")) or any(root.glob("*.pt")):
        raise ValueError(
            f"{root}: weights are pickle files; wsm reads safetensors only (pickles can run code): "
            "re-save with save_pretrained(..., safe_serialization=True)"
        )
    raise ValueError(f"{root}: no model.safetensors and no {INDEX_FILE}")


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _hash(root: Path, name: str) -> WeightsFile:
    identity = _identity(root / name)
    return WeightsFile(name, _sha256(root / name, *identity), identity[1], identity)


@functools.lru_cache(maxsize=256)
def _sha256(path: Path, inode: int, size: int, mtime_ns: int) -> str:
    """sha256 of a file, remembered while the file is unchanged (same inode, size and mtime): a
    command opens the directory to check it, then to evaluate it, and reads gigabytes only once."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def load_weights(model: HFModelDir) -> dict[str, torch.Tensor]:
    """Every tensor of the directory under megatron's local-spec names.

    Each file must still be the one hashed when the directory was opened (same inode, size and
    mtime, before and after it is read): the evaluation's record names that hash. Reading once into
    memory (not into a buffer and again into tensors) keeps a large model at one copy.
    """
    tensors: dict[str, torch.Tensor] = {}
    for entry in model.files:
        path = model.path / entry.name
        if _identity(path) != entry.identity:
            raise ValueError(f"{path} changed after it was hashed; run again")
        try:
            tensors.update(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own SafetensorError on a corrupt header
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
        if _identity(path) != entry.identity:
            raise ValueError(f"{path} changed while it was being read; run again")
    return from_hf_state_dict(tensors, model.model_cfg, str(model.path))


def from_hf_state_dict(
    tensors: dict[str, torch.Tensor], cfg: ModelConfig, where: str = "model"
) -> dict[str, torch.Tensor]:
    """``LlamaForCausalLM`` tensors -> megatron local-spec tensors (inverse of ``to_hf_state_dict``).

    The fused ``linear_qkv`` is rebuilt group by group (the group's query heads, one key head, one
    value head) and ``linear_fc1`` as ``[gate; up]``. A tied model's ``lm_head`` (some writers save
    it anyway) is dropped. Consumes ``tensors``.
    """
    heads, groups, hd, width = cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim, cfg.hidden_size
    per = heads // groups

    def take(name: str) -> torch.Tensor:
        try:
            return tensors.pop(name)
        except KeyError:
            raise ValueError(f"{where}: no tensor {name!r} in its weights") from None

    out = {"embedding.word_embeddings.weight": take("model.embed_tokens.weight")}
    for i in range(cfg.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        try:
            q = take(src + "self_attn.q_proj.weight").reshape(groups, per, hd, width)
            k = take(src + "self_attn.k_proj.weight").reshape(groups, 1, hd, width)
            v = take(src + "self_attn.v_proj.weight").reshape(groups, 1, hd, width)
        except RuntimeError as exc:  # reshape of a tensor of the wrong size
            raise ValueError(f"{where}: layer {i} attention does not match config.json ({exc})") from None
        out[dst + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, width)
        out[dst + "self_attention.linear_proj.weight"] = take(src + "self_attn.o_proj.weight")
        gate, up = take(src + "mlp.gate_proj.weight"), take(src + "mlp.up_proj.weight")
        out[dst + "mlp.linear_fc1.weight"] = torch.cat([gate, up], dim=0)
        out[dst + "mlp.linear_fc2.weight"] = take(src + "mlp.down_proj.weight")
        out[dst + "input_layernorm.weight"] = take(src + "input_layernorm.weight")
        out[dst + "pre_mlp_layernorm.weight"] = take(src + "post_attention_layernorm.weight")
    out["decoder.final_layernorm.weight"] = take("model.norm.weight")
    head = tensors.pop("lm_head.weight", None)
    if not cfg.tie_embeddings:
        if head is None:
            raise ValueError(f"{where}: no tensor 'lm_head.weight' although tie_word_embeddings is false")
        out["output_layer.weight"] = head
    extra = sorted(n for n in tensors if not n.endswith(_IGNORED))
    if extra:
        raise ValueError(
            f"{where}: tensors a Llama model of this config does not have: {', '.join(extra[:3])}"
        )
    return {name: t.contiguous() for name, t in out.items()}


def check_tokenizer(model: HFModelDir, run_tokenizer: Any, run: str) -> None:
    """The run's tokenizer must be the directory's: its ids must fit the embedding, and a
    ``tokenizer.json`` in the directory must map every token to the same id. ValueError otherwise."""
    size = run_tokenizer.get_vocab_size(with_added_tokens=True)
    if size > model.vocab_size:
        raise ValueError(
            f"{model.path}: vocab_size={model.vocab_size} is smaller than the tokenizer of run {run!r} "
            f"({size} tokens); it was not trained with that run's tokenizer (choose the run with --run)"
        )
    own = model.path / "tokenizer.json"
    if not own.is_file():
        return
    from tokenizers import Tokenizer

    try:
        theirs = Tokenizer.from_file(str(own)).get_vocab(with_added_tokens=True)
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ValueError(f"{own}: not a Hugging Face tokenizer.json ({exc})") from None
    ours = run_tokenizer.get_vocab(with_added_tokens=True)
    if theirs != ours:
        differ = sorted(set(theirs.items()) ^ set(ours.items()))
        raise ValueError(
            f"{own} differs from the tokenizer of run {run!r} (e.g. token {differ[0][0]!r}); the run's "
            "held-out data would be read with the wrong ids (choose the run with --run)"
        )
