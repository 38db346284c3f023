"""What a checkpoint in Megatron's ``torch_dist`` format holds: megatron-core sharded state dicts.

The state dict is laid out as Megatron-LM's ``generate_state_dict`` lays it out, so Megatron's
own tools read a wsm checkpoint and a wsm run can resume from Megatron's view of it:

- ``model``: ``GPTModel.sharded_state_dict()``. Keys are megatron's (``embedding.…``,
  ``decoder.layers.self_attention.linear_qkv.weight`` with the layers stacked on a leading
  dimension, the local spec's norms under Transformer Engine's names), whatever the TP layout:
  megatron reshards on load.
- ``optimizer``: the engine's optimizer state mapped onto the model's shards. CPU (torch AdamW):
  megatron-core's ``dist_checkpointing.optimizer`` helpers, the mapping megatron's own
  ``FP32Optimizer`` uses, giving ``optimizer.state.exp_avg.<model key>`` and ``…exp_avg_sq…``;
  the Adam step is the training step (``train_state.json``), not stored per tensor. GPU:
  the megatron optimizer's ``sharded_state_dict`` (the distributed optimizer in
  ``fully_sharded_model_space``, reshardable over TP and DP).
- ``rng_state``: a ShardedObject over the TP ranks (replicated over DP), as Megatron-LM's;
  restored only on the layout it was saved with (the model has no dropout, so nothing depends on
  it but bit-exactness).
- ``common.pt``: ``args`` (an ``argparse.Namespace`` with Megatron-LM's argument names:
  architecture, batch sizes, parallel sizes, optimizer), ``iteration``, ``checkpoint_version``,
  ``opt_param_scheduler`` and ``wsm`` (the training state, as in ``train_state.json``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from trainer.config import TrainConfig
from trainer.distributed import DistInfo
from trainer.schedule import ScheduleSpec

CHECKPOINT_VERSION = 3.0
"""Megatron-LM's ``checkpoint_version`` of its current layout (QKV ordering and names)."""
GPU_OPTIMIZER_METADATA = {
    "distrib_optim_sharding_type": "fully_sharded_model_space",
    "chained_optim_avoid_prefix": True,
}
"""How megatron's optimizers shard their state: per parameter in model space (reshardable), keys
without a ``chained_<i>.`` prefix. Saved in ``common.pt`` and used again to load."""


def megatron_args(
    cfg: TrainConfig,
    info: DistInfo,
    *,
    vocab_size: int,
    padded_vocab: int,
    spec: ScheduleSpec,
    step: int,
    bf16: bool,
    distributed_optimizer: bool,
) -> argparse.Namespace:
    """The run as Megatron-LM's ``args``: what its tools (and wsm's DCP reader) look for."""
    m = cfg.model
    return argparse.Namespace(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        group_query_attention=m.num_query_groups < m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.head_dim,
        seq_length=m.seq_length,
        max_position_embeddings=m.seq_length,
        vocab_size=vocab_size,
        padded_vocab_size=padded_vocab,
        make_vocab_size_divisible_by=m.vocab_multiple,
        normalization="RMSNorm",
        norm_epsilon=m.norm_epsilon,
        swiglu=True,
        position_embedding_type="rope",
        rotary_base=m.rotary_base,
        rotary_percent=1.0,
        untie_embeddings_and_output_weights=not m.tie_embeddings,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_std,
        global_batch_size=cfg.global_batch_size,
        micro_batch_size=cfg.micro_batch_size,
        rampup_batch_size=None,
        tensor_model_parallel_size=info.tp_size,
        pipeline_model_parallel_size=1,
        data_parallel_size=info.dp_size,
        world_size=info.world_size,
        use_distributed_optimizer=distributed_optimizer,
        bf16=bf16,
        fp16=False,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        optimizer="adam",
        lr=spec.max_lr,
        min_lr=spec.min_lr,
        lr_warmup_iters=spec.warmup_steps,
        weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.beta1,
        adam_beta2=cfg.optim.beta2,
        adam_eps=cfg.optim.eps,
        clip_grad=cfg.optim.clip_grad,
        seed=cfg.seed,
        iteration=step,
        consumed_train_samples=step * cfg.global_batch_size,
        ckpt_format="torch_dist",
    )


def rng_state(info: DistInfo, *, cuda: bool) -> Any:
    """This rank's RNG states as Megatron-LM stores them (one ShardedObject over the TP ranks)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    state: dict[str, Any] = {"torch_rng_state": torch.get_rng_state()}
    if cuda:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        state["cuda_rng_state"] = torch.cuda.get_rng_state()
        state["rng_tracker_states"] = get_cuda_rng_tracker().get_states()
    return ShardedObject("rng_state", [state], (1, info.tp_size), (0, info.tp_rank), replica_id=info.dp_rank)


def restore_rng(loaded: Any) -> None:
    state = loaded[0] if isinstance(loaded, list) else loaded
    torch.set_rng_state(state["torch_rng_state"])
    if "cuda_rng_state" in state and torch.cuda.is_available():
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        torch.cuda.set_rng_state(state["cuda_rng_state"])
        get_cuda_rng_tracker().set_states(state["rng_tracker_states"])


def adamw_sharded_state(
    optimizer: torch.optim.Optimizer, model_sharded: dict[str, Any], *, is_loading: bool
) -> dict[str, Any]:
    """torch AdamW's state as ShardedTensors shaped like the model's (CPU engine).

    The moments are the live tensors, not copies: a background save must be scheduled (its
    snapshot taken) before the next optimizer step. For loading, zero moments are created first
    so that every parameter has tensors to load into.
    """
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        optim_state_to_sharding_state,
    )

    params = [p for g in optimizer.param_groups for p in g["params"]]
    if is_loading:
        for p in params:
            optimizer.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
    state = optimizer.state_dict()
    id_map = get_param_id_to_sharded_param_map(model_sharded, params)
    missing = [i for i in state["state"] if i not in id_map]
    if missing:
        raise ValueError(f"optimizer parameters {missing[:5]} are not in the model's sharded state dict")
    optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
    return state


def load_adamw_state(optimizer: torch.optim.Optimizer, loaded: dict[str, Any], adam_step: int) -> None:
    """Put loaded moments back into AdamW, with the step counter it keeps per parameter."""
    for param_state in loaded["state"].values():
        # Same dtype/device AdamW itself uses for its step counter on CPU.
        param_state["step"] = torch.tensor(float(adam_step), dtype=torch.float32)
    optimizer.load_state_dict(loaded)


def sharded_state_dict(
    model: torch.nn.Module,
    engine: Any,
    info: DistInfo,
    *,
    is_loading: bool,
    common: dict[str, Any] | None = None,
    with_rng: bool = True,
) -> dict[str, Any]:
    """The whole checkpoint's state dict on this rank (collective-free; metadata and references only)."""
    model_sharded = model.sharded_state_dict()  # type: ignore[operator]  # megatron's GPTModel
    out: dict[str, Any] = {
        "model": model_sharded,
        "optimizer": engine.sharded_optimizer_state(model_sharded, is_loading=is_loading),
    }
    if with_rng:
        out["rng_state"] = rng_state(info, cuda=info.cuda)
    out.update(common or {})
    return out
