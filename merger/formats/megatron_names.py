"""Megatron's checkpoint names as wsm's own: one tensor per layer, local-spec norm names.

megatron-core's dist-checkpointing stores the transformer layers stacked: ``decoder.layers.<param>``
with the layer as a leading dimension of ``num_layers`` rows, and the pre-attention / pre-MLP
norms under Transformer Engine's fused names (``linear_qkv.layer_norm_weight``,
``linear_fc1.layer_norm_weight``) whichever layer spec trained the model. wsm's trainer stores
full tensors per layer under megatron's *local* spec names (``decoder.layers.<i>.<param>``,
``input_layernorm.weight``, ``pre_mlp_layernorm.weight``; see ``trainer/weights.py``), which is
what ``wsm export --hf`` and the evaluator read. A safetensors merge of Megatron inputs is written
under those names (:func:`per_layer_names`): row ``i`` of a stacked tensor becomes its layer-``i``
tensor, so the output is a GPTModel ``state_dict`` that ``load_state_dict`` takes as is.
"""

from __future__ import annotations

import re

from merger.errors import MergeError
from merger.formats.base import CheckpointLayout

STACKED_PREFIX = "decoder.layers."
_TE_TO_LOCAL = (
    (re.compile(r"^self_attention\.linear_qkv\.layer_norm_weight$"), "input_layernorm.weight"),
    (re.compile(r"^mlp\.linear_fc1\.layer_norm_weight$"), "pre_mlp_layernorm.weight"),
)


def _local(param: str) -> str:
    for pattern, repl in _TE_TO_LOCAL:
        param = pattern.sub(repl, param)
    return param


def per_layer_names(layout: CheckpointLayout) -> dict[str, list[str]]:
    """For a Megatron checkpoint: each layer-stacked tensor -> the names of its layers, in order.

    Empty for anything else (plain DCP, safetensors): only a ``torch_dist`` checkpoint whose saved
    arguments give ``num_layers`` has stacked layers, and only tensors under ``decoder.layers.``
    with ``num_layers`` rows are split.
    """
    args = layout.metadata.get("args") or {}
    num_layers = args.get("num_layers")
    if layout.metadata.get("sharded_backend") != "torch_dist" or not isinstance(num_layers, int):
        return {}
    out: dict[str, list[str]] = {}
    taken: dict[str, str] = {}
    for name, t in layout.tensors.items():
        if not name.startswith(STACKED_PREFIX) or not t.shape or t.shape[0] != num_layers:
            continue
        param = _local(name[len(STACKED_PREFIX) :])
        out[name] = [f"{STACKED_PREFIX}{i}.{param}" for i in range(num_layers)]
        if out[name][0] in taken or out[name][0] in layout.tensors:
            other = taken.get(out[name][0], out[name][0])
            raise MergeError(
                f"{layout.uri}: tensors {other!r} and {name!r} would both be written as {out[name][0]!r}"
            )
        taken[out[name][0]] = name
    return out
