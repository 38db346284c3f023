"""Models of external runs (``wsm runs add``) as wsm's megatron-core model: shape, tokenizer, weights.

An external run records no wsm model configuration. Its shape comes from the arguments Megatron-LM
saved in ``common.pt``, which the run's sync copied into every checkpoint manifest
(``extra["megatron"]["args"]``, merger/external.py). :func:`config_from_args` maps them onto
:class:`~trainer.config.ModelConfig` when they describe the block wsm's model builds (RMSNorm,
SwiGLU, RoPE on the whole head, no linear biases, grouped-query attention, no experts) and
otherwise names, in one line, every argument that is missing or describes something else.
Arguments ``common.pt`` does not keep for every version (``rotary_base``, ``norm_epsilon``) take
Megatron-LM's defaults when absent.

Weights: a checkpoint of an external run is read from its DCP directory by byte range, after
its identity is checked (:func:`trainer.dist_load.read_weights`, the road of every checkpoint in
Megatron's layout); an annealed model of one is the store's
safetensors under Megatron's sharded names. Both hold the layers stacked on a leading dimension
(``decoder.layers.mlp.linear_fc1.weight`` is ``[num_layers, 2 * ffn, hidden]``, gate rows then up
rows, as wsm's canonical fc1); :func:`trainer.weights.from_dist_names` unstacks them into the model's own names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from trainer.config import ModelConfig
from trainer.units import format_tokens
from wsm.store import ArtifactNotFoundError, CheckpointManifest, ModelManifest, RunManifest, Store

REQUIRED_ARGS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "seq_length",
    "padded_vocab_size",
    "normalization",
    "swiglu",
    "position_embedding_type",
    "untie_embeddings_and_output_weights",
    "add_bias_linear",
)
MEGATRON_DEFAULTS = {"rotary_base": 10000, "norm_epsilon": 1e-5}


def config_from_args(args: Mapping[str, Any], where: str) -> tuple[ModelConfig, int]:
    """``(ModelConfig, padded vocabulary)`` from Megatron-LM's saved arguments; ValueError naming what is off."""
    missing = [k for k in REQUIRED_ARGS if args.get(k) is None]
    heads, hidden = args.get("num_attention_heads"), args.get("hidden_size")
    problems = []
    if args.get("normalization") not in (None, "RMSNorm"):
        problems.append(f"normalization={args['normalization']} (wsm's model uses RMSNorm)")
    if args.get("swiglu") is False:
        problems.append("swiglu=False (wsm's model uses SwiGLU)")
    if args.get("position_embedding_type") not in (None, "rope"):
        problems.append(f"position_embedding_type={args['position_embedding_type']} (wsm's model uses RoPE)")
    if args.get("rotary_percent") not in (None, 1.0):
        problems.append(f"rotary_percent={args['rotary_percent']} (wsm's model rotates the whole head)")
    if args.get("add_bias_linear"):
        problems.append("add_bias_linear=True (wsm's model has no linear biases)")
    if args.get("add_qkv_bias"):
        problems.append("add_qkv_bias=True (wsm's model has no attention biases)")
    if args.get("num_experts"):
        problems.append(f"num_experts={args['num_experts']} (wsm's model is dense)")
    kv = args.get("kv_channels")
    if (
        kv is not None
        and isinstance(heads, int)
        and isinstance(hidden, int)
        and heads
        and kv != hidden // heads
    ):
        problems.append(
            f"kv_channels={kv} (wsm's model uses hidden_size / num_attention_heads = {hidden // heads})"
        )
    if missing:
        problems.insert(0, f"the saved arguments do not record {', '.join(missing)}")
    if problems:
        raise ValueError(
            f"{where}: not a model wsm's megatron-core model can evaluate: {'; '.join(problems)}"
        )
    groups = args.get("num_query_groups") if args.get("group_query_attention") else heads
    try:
        cfg = ModelConfig(
            preset=None,
            num_layers=args["num_layers"],
            hidden_size=hidden,
            ffn_hidden_size=args["ffn_hidden_size"],
            num_attention_heads=heads,
            num_query_groups=groups or heads,
            seq_length=args["seq_length"],
            tie_embeddings=not args["untie_embeddings_and_output_weights"],
            rotary_base=int(args.get("rotary_base") or MEGATRON_DEFAULTS["rotary_base"]),
            norm_epsilon=float(args.get("norm_epsilon") or MEGATRON_DEFAULTS["norm_epsilon"]),
        )
    except ValidationError as e:
        first = e.errors()[0]
        raise ValueError(f"{where}: saved arguments give an impossible shape: {first['msg']}") from None
    return cfg, int(args["padded_vocab_size"])


def _args_checkpoint(store: Store, manifest: CheckpointManifest | ModelManifest) -> CheckpointManifest:
    """The checkpoint whose saved arguments describe ``manifest``: itself, or a model's newest source."""
    if isinstance(manifest, CheckpointManifest):
        return manifest
    if not manifest.sources:
        raise ValueError(f"{manifest.dir}: records no source checkpoints, so its architecture is unknown")
    tokens = max(s.tokens for s in manifest.sources)
    try:
        return store.get_checkpoint(manifest.run, tokens)
    except ArtifactNotFoundError:
        raise ValueError(
            f"{manifest.dir}: its newest source checkpoint ({format_tokens(tokens)} tokens) is gone from the "
            "store, and with it the saved arguments that give its architecture"
        ) from None


def model_config(
    store: Store, run: RunManifest, manifest: CheckpointManifest | ModelManifest
) -> tuple[ModelConfig, int]:
    """Shape and padded vocabulary of a checkpoint or model of an external run; ValueError if wsm cannot build it."""
    source = run.source
    assert source is not None, "model_config is for external runs"
    if not run.tokenizer.get("file"):
        raise ValueError(
            f"run {run.run!r} has no tokenizer registered, so {manifest.dir} cannot be evaluated: "
            "register one with `wsm runs add ... --tokenizer PATH --overwrite`"
        )
    if source.layout != "megatron":
        raise ValueError(
            f"run {run.run!r} is a {source.layout} run: its checkpoints carry no model arguments, and wsm "
            "evaluates external models only from Megatron's saved arguments (common.pt)"
        )
    ck = _args_checkpoint(store, manifest)
    args = (ck.extra.get("megatron") or {}).get("args")
    if not isinstance(args, dict):
        raise ValueError(
            f"{ck.dir}: its common.pt holds no Megatron arguments, so its architecture is unknown"
        )
    where = ck.location.uri if ck.location is not None else ck.dir
    return config_from_args(args, where)
