"""The typed configuration of a training run: YAML file + ``--set key=value`` overrides, validated.

Every field has a docstring; ``wsm train --help`` prints them (see :func:`describe_fields`).
Shape constraints megatron would otherwise report deep inside model construction (heads divide
hidden, groups divide heads, TP divides groups and FFN) are checked here with plain messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from theory import canonical_curve_name
from trainer.presets import preset
from trainer.textsplit import TextSplit
from trainer.units import parse_tokens
from wsm.settings import Settings

# A token count as written by people ('25B', '200k', or a YAML integer) becomes an int here, once.
TokenSize = Annotated[int, BeforeValidator(lambda v: parse_tokens(v, name="token count"))]
TokenSizeOrZero = Annotated[
    int, BeforeValidator(lambda v: parse_tokens(v, name="token count", allow_zero=True))
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelConfig(_Section):
    """Llama-style GPT shape (RMSNorm, SwiGLU, RoPE, grouped-query attention)."""

    preset: str | None = "tiny"
    """Named shape (tiny, small, 125m, 1b, 8b) that fills every shape field not given explicitly."""

    num_layers: int = Field(default=4, ge=1)
    """Transformer layers."""

    hidden_size: int = Field(default=256, ge=8)
    """Model width."""

    ffn_hidden_size: int = Field(default=704, ge=8)
    """SwiGLU inner width (each of gate and up)."""

    num_attention_heads: int = Field(default=8, ge=1)
    """Query heads; head dim = hidden_size / num_attention_heads."""

    num_query_groups: int = Field(default=2, ge=1)
    """Key/value heads (grouped-query attention); must divide num_attention_heads."""

    seq_length: int = Field(default=256, ge=8)
    """Training sequence length in tokens."""

    tie_embeddings: bool = False
    """Share input embedding and output layer weights (Llama-3 1B ties, 8B does not)."""

    rotary_base: int = Field(default=10000, ge=1)
    """RoPE base (theta)."""

    norm_epsilon: float = Field(default=1e-5, gt=0)
    """RMSNorm epsilon (also the exported rms_norm_eps)."""

    init_std: float = Field(default=0.02, gt=0)
    """Standard deviation of the normal weight initialisation."""

    vocab_multiple: int = Field(default=64, ge=1)
    """Pad the embedding rows to a multiple of this (times TP) for fast matmuls."""

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            name = data.get("preset", "tiny")
            if name:
                return {**preset(name), **data}
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.num_attention_heads={self.num_attention_heads} must divide "
                f"model.hidden_size={self.hidden_size}"
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"model.num_query_groups={self.num_query_groups} must divide "
                f"model.num_attention_heads={self.num_attention_heads}"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("head dim (hidden_size / num_attention_heads) must be even for RoPE")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class DataConfig(_Section):
    """Corpus, tokenizer and sampling."""

    paths: list[str] = Field(default_factory=lambda: ["builtin:stdlib"])
    """Text sources: files, directories or globs of .jsonl/.json (``text`` field), .txt/.md/.py (cut into
    documents, see text_split), .parquet; ``builtin:stdlib`` is the Python standard library's source and
    docstrings (no download)."""

    builtin_max_bytes: int | None = Field(default=None, ge=1)
    """Use only the first this many bytes of the built-in corpus (deterministic order); None = all."""

    text_field: str = "text"
    """Field holding the document text in jsonl/parquet inputs."""

    text_split: TextSplit = "blank_lines"
    """How a plain-text file (.txt/.md/.rst/.py/.text) becomes documents: blank_lines (cut at blank
    lines, consecutive paragraphs packed into documents of up to text_doc_chars), separator (cut at
    every text_separator), chars (pieces of text_doc_chars, ending at a line break), none (one per file)."""

    text_separator: str | None = None
    """The marker between documents for text_split=separator, e.g. '<|endoftext|>' or '\\n---\\n'."""

    text_doc_chars: int = Field(default=4000, ge=100)
    """Largest document, in characters, that blank_lines and chars make from a plain-text file."""

    tokenizer: str | None = None
    """Path to a Hugging Face ``tokenizer.json`` to use; None trains a byte-level BPE on the corpus."""

    vocab_size: int = Field(default=4096, ge=300)
    """Vocabulary size of a BPE trained on the corpus (ignored with ``tokenizer``)."""

    valid_fraction: float = Field(default=0.02, ge=0.0, lt=0.5)
    """Fraction of documents held out for validation loss."""

    valid_samples: int = Field(default=16, ge=0)
    """Validation sequences evaluated at each checkpoint (0 disables validation)."""

    cache_dir: str = Field(default_factory=lambda: Settings().cache_dir)
    """Where tokenizers and indexed datasets are cached, keyed by content hash (env WSM_CACHE_DIR)."""

    @model_validator(mode="after")
    def _check_split(self) -> DataConfig:
        if self.text_split == "separator" and not self.text_separator:
            raise ValueError("data.text_split=separator needs data.text_separator (e.g. '<|endoftext|>')")
        return self


class OptimConfig(_Section):
    """AdamW with decoupled weight decay; no decay on norms and biases."""

    lr: float = Field(default=1e-3, gt=0)
    """Peak learning rate (the constant LR of WSO)."""

    weight_decay: float = Field(default=0.1, ge=0)
    """AdamW weight decay on matrices and embeddings."""

    beta1: float = Field(default=0.9, ge=0, lt=1)
    """AdamW beta1."""

    beta2: float = Field(default=0.95, ge=0, lt=1)
    """AdamW beta2."""

    eps: float = Field(default=1e-8, gt=0)
    """AdamW epsilon."""

    clip_grad: float = Field(default=1.0, ge=0)
    """Clip the global gradient norm to this (0 disables)."""


MEGATRON_CURVES = {
    "linear": "linear",
    "cosine": "cosine",
    "1-sqrt": "minus_sqrt",
    "exponential": "exponential",
}
"""The curves of theory's registry that megatron's WSD schedule runs as a real decay, with megatron's names."""


def _real_decay_curve(value: Any) -> str:
    """A curve of theory's registry that megatron's WSD schedule can also run."""
    name = canonical_curve_name(value)
    if name not in MEGATRON_CURVES:
        raise ValueError(f"a real decay runs one of {', '.join(MEGATRON_CURVES)}, not {name!r}")
    return name


Curve = Annotated[str, BeforeValidator(_real_decay_curve)]


class ScheduleConfig(_Section):
    """Learning-rate schedule; WSO (warmup then constant forever) is the product's default."""

    style: Literal["wso", "wsd", "cosine", "linear"] = "wso"
    """wso: warmup then constant; wsd: constant then a decay of ``decay`` tokens at the end of
    train_tokens; cosine / linear: decay from warmup to train_tokens."""

    warmup: TokenSizeOrZero = 50_000
    """Linear warmup length in tokens (e.g. '2M'); 0 disables."""

    decay: TokenSize | None = None
    """WSD decay length in tokens (default: 20% of train_tokens)."""

    decay_curve: Curve = "1-sqrt"
    """WSD decay curve: linear, cosine, 1-sqrt (megatron's minus_sqrt) or exponential."""

    min_lr_factor: float = Field(default=0.0, ge=0.0, le=1.0)
    """Decays end at min_lr_factor × lr."""


class CheckpointConfig(_Section):
    """Checkpoints written to the store: the product's input."""

    save_every: TokenSize = 200_000
    """Write a checkpoint every this many tokens (e.g. '25B', '200k')."""

    save_on_exit: bool = True
    """On SIGTERM/SIGINT, write a final checkpoint before exiting."""

    upload_retries: int = Field(default=3, ge=0)
    """Retries of a failed checkpoint upload before training stops with an error."""

    resume: bool = True
    """Continue from the newest complete checkpoint of the same run name if there is one."""

    format: Literal["torch_dist", "safetensors"] = "torch_dist"
    """torch_dist: Megatron-LM's layout through megatron-core's dist_checkpointing, every rank writing
    its own shards (resumable on another TP/DP layout); safetensors: the legacy layout (weights
    gathered to rank 0 as full tensors). Either layout resumes and merges."""

    scratch_dir: str | None = None
    """torch_dist only: where ranks write a checkpoint before it is published; every rank must see it
    (shared storage across nodes). Default: beside the checkpoints on a local store (publishing then
    hard-links), the system temp dir otherwise."""


class ParallelConfig(_Section):
    """Parallel layout; data-parallel size is world_size / tensor_parallel."""

    tensor_parallel: int = Field(default=1, ge=1)
    """Tensor-parallel size (must divide query groups, heads and FFN)."""

    distributed_optimizer: bool | None = None
    """GPU: megatron's distributed optimizer (optimizer state sharded over data-parallel ranks);
    None uses it whenever data-parallel size > 1. Resuming needs the same choice. CPU: must stay None."""


class TrainConfig(_Section):
    """A pre-training run."""

    run: str = "demo"
    """Run name in the store; starting again with the same name resumes it."""

    store: str | None = None
    """Store URL (default: WSM_STORE_URL, i.e. settings.store_url)."""

    seed: int = 1234
    """Seed of initialisation and data order."""

    train_tokens: TokenSize | None = None
    """Stop after this many tokens; None trains until stopped (WSO never needs an end)."""

    micro_batch_size: int = Field(default=8, ge=1)
    """Sequences per forward pass per data-parallel rank."""

    global_batch_size: int = Field(default=8, ge=1)
    """Sequences per optimizer step across all ranks (gradient accumulation fills the gap)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto picks CUDA when available."""

    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU (bf16 autocast fails in megatron's CPU backward)."""

    threads: int | None = Field(default=None, ge=1)
    """torch CPU threads per process (default: torch's choice)."""

    log_every: int = Field(default=10, ge=1)
    """Progress line and metrics every this many steps."""

    tensorboard: str | None = None
    """Also write TensorBoard events to this directory (if tensorboard is installed)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """Model shape."""

    data: DataConfig = Field(default_factory=DataConfig)
    """Corpus and tokenizer."""

    optim: OptimConfig = Field(default_factory=OptimConfig)
    """Optimizer."""

    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    """LR schedule."""

    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpointing."""

    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    """Parallelism."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        tp, m = self.parallel.tensor_parallel, self.model
        for what, value in (
            ("model.num_query_groups", m.num_query_groups),
            ("model.num_attention_heads", m.num_attention_heads),
            ("model.ffn_hidden_size", m.ffn_hidden_size),
        ):
            if value % tp:
                raise ValueError(f"parallel.tensor_parallel={tp} must divide {what}={value}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size={self.micro_batch_size} must divide global_batch_size={self.global_batch_size}"
            )
        if self.schedule.style != "wso" and self.train_tokens is None:
            raise ValueError(f"schedule.style={self.schedule.style} decays, so it needs train_tokens")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.model.seq_length


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_path(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


# Configs shipped inside the package, usable by name (``--config demo``) from any install.
PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of a packaged config such as ``demo``."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    packaged = PACKAGED_CONFIGS / f"{candidate.name.removesuffix('.yaml')}.yaml"
    if candidate.parent == Path(".") and packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ValueError(f"config {str(path)!r}: no such file, nor a packaged config (packaged: {names})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (a path or a packaged name; defaults when None), apply overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must hold a mapping")
        tree = loaded or {}
    return TrainConfig.model_validate(apply_overrides(tree, list(overrides or [])))


def describe_fields(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    """One ``key (default): doc`` line per leaf field, for ``--help``."""
    lines: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.extend(describe_fields(annotation, f"{prefix}{name}."))
            continue
        default = info.get_default(call_default_factory=True)
        doc = " ".join((info.description or "").split())
        lines.append(f"  {prefix}{name} (default {default!r}): {doc}")
    return lines
