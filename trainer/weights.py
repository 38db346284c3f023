"""Layout-independent weights: gather TP shards into full tensors under canonical names, and back.

The store holds full, unsharded tensors named as megatron's *local* spec names them, so a
checkpoint written at TP=2 on GPU with Transformer Engine loads into a TP=1 CPU model and vice
versa. TE fuses the pre-attention / pre-MLP RMSNorm into the following linear; its parameter names
are mapped to the local ones. ``_extra_state`` entries are never stored (the layers refill them).

Shard layout (megatron column/row parallel linears): qkv, fc1, embedding and output layer are split
on dim 0, linear_proj and fc2 on dim 1. fc1 holds ``[gate_r; up_r]`` per rank, so gates and ups are
concatenated separately. Norms are replicated.

Checkpoints in megatron's ``torch_dist`` format name tensors as megatron's sharded state dict
does (layers stacked, TE norm names); :func:`from_dist_names` turns those into the names above.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist
from safetensors.torch import load_file

_TE_TO_LOCAL = [
    (re.compile(r"\.self_attention\.linear_qkv\.layer_norm_weight$"), ".input_layernorm.weight"),
    (re.compile(r"\.mlp\.linear_fc1\.layer_norm_weight$"), ".pre_mlp_layernorm.weight"),
]
_LOCAL_TO_TE = [
    (re.compile(r"\.input_layernorm\.weight$"), ".self_attention.linear_qkv.layer_norm_weight"),
    (re.compile(r"\.pre_mlp_layernorm\.weight$"), ".mlp.linear_fc1.layer_norm_weight"),
]


_STACKED_LAYERS = "decoder.layers."


def is_dist_named(names: Iterable[str]) -> bool:
    """Whether tensor names are megatron's checkpoint names (``decoder.layers.<sub>`` with the layers
    stacked), as a ``torch_dist`` checkpoint and a merge of such checkpoints store them."""
    return any(n.startswith(_STACKED_LAYERS) and not n[len(_STACKED_LAYERS) :][:1].isdigit() for n in names)


def from_dist_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors under megatron's checkpoint names -> canonical (local spec) names.

    ``decoder.layers.<sub>`` of shape ``[layers, ...]`` becomes ``decoder.layers.<i>.<sub>``; the
    norms stored under Transformer Engine's names get the local ones. ``fc1`` is stored as the
    full ``[gate; up]`` already, like the canonical layout. Transformer Engine's ``_extra_state``
    entries are dropped: the model refills them. Consumes ``tensors``.
    """
    out: dict[str, torch.Tensor] = {}
    for name in list(tensors):
        t = tensors.pop(name)
        if "_extra_state" in name:
            continue
        rest = name[len(_STACKED_LAYERS) :]
        if name.startswith(_STACKED_LAYERS) and not rest[:1].isdigit():
            for i, layer in enumerate(t.unbind(0)):
                out[canonical_name(f"{_STACKED_LAYERS}{i}.{rest}")] = layer.clone()
        else:
            out[canonical_name(name)] = t
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = cast(torch.nn.Module, model.module)
    return model


def canonical_name(name: str) -> str:
    """Local-spec name of a parameter (identity for local-spec models)."""
    for pattern, repl in _TE_TO_LOCAL:
        name = pattern.sub(repl, name)
    return name


def _is_gated_fc1(name: str) -> bool:
    return name.endswith("mlp.linear_fc1.weight")


def named_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Canonical name -> parameter of the unwrapped model (this rank's shards)."""
    return {canonical_name(n): p for n, p in unwrap(model).named_parameters()}


def gather_tensor(
    shard: torch.Tensor, param: torch.nn.Parameter, name: str, group: dist.ProcessGroup | None, tp_size: int
) -> torch.Tensor:
    """The full tensor of a TP-sharded ``shard`` shaped like ``param`` (a new CPU tensor)."""
    if tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return shard.detach().to("cpu", copy=True)
    parts = [torch.empty_like(shard) for _ in range(tp_size)]
    # The list form of all_gather: gloo has no all_gather_into_tensor.
    dist.all_gather(parts, shard.detach().contiguous(), group=group)
    parts = [p.cpu() for p in parts]
    if _is_gated_fc1(name):
        gates = [p.chunk(2, dim=0)[0] for p in parts]
        ups = [p.chunk(2, dim=0)[1] for p in parts]
        return torch.cat(gates + ups, dim=0)
    return torch.cat(parts, dim=int(getattr(param, "partition_dim", 0)))


def shard_tensor(
    full: torch.Tensor, param: torch.nn.Parameter, name: str, tp_rank: int, tp_size: int
) -> torch.Tensor:
    """This rank's TP shard of a full tensor (inverse of :func:`gather_tensor`)."""
    if tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    if _is_gated_fc1(name):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size, dim=0)[tp_rank], up.chunk(tp_size, dim=0)[tp_rank]], dim=0)
    return full.chunk(tp_size, dim=int(getattr(param, "partition_dim", 0)))[tp_rank].contiguous()


def full_state_dict(
    model: torch.nn.Module,
    *,
    group: dist.ProcessGroup | None = None,
    tp_size: int = 1,
    tensors: Callable[[str, torch.nn.Parameter], Iterable[tuple[str, torch.Tensor]]] | None = None,
) -> dict[str, torch.Tensor]:
    """Full CPU copies of every parameter (collective over the TP group when ``tp_size`` > 1).

    ``tensors`` yields extra per-parameter tensors to gather (e.g. optimizer moments), keyed by
    the name it returns; by default the parameter itself is gathered under its canonical name.
    """
    out: dict[str, torch.Tensor] = {}
    for name, param in named_parameters(model).items():
        items = tensors(name, param) if tensors is not None else [(name, param.data)]
        for key, value in items:
            out[key] = gather_tensor(value, param, name, group, tp_size)
    return out


def load_full_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], *, tp_rank: int = 0, tp_size: int = 1
) -> None:
    """Load full canonical tensors into this rank's shards, strictly: every parameter, nothing extra."""
    params = named_parameters(model)
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            piece = shard_tensor(state[name], param, name, tp_rank, tp_size)
            if piece.shape != param.shape:
                raise ValueError(
                    f"{name}: stored shape {tuple(state[name].shape)} does not fit {tuple(param.shape)}"
                )
            param.copy_(piece.to(param.dtype))


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's safetensors weights (full tensors, canonical names) to CPU."""
    return load_file(str(path), device="cpu")


def local_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Canonical full tensors renamed to the model's own names (for ``load_state_dict`` by callers)."""
    names = {canonical_name(n): n for n, _ in unwrap(model).named_parameters()}
    return {names.get(k, k): v for k, v in state.items()}
