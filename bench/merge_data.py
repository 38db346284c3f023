"""Synthetic bf16 checkpoints for the merge benchmark, written by streaming (no model in memory).

Each checkpoint is a Hugging Face Llama directory (``config.json`` + ``model.safetensors`` with
Llama tensor names), so mergekit accepts it as a model: hidden 2048, FFN 5632, a 32k vocabulary
with untied embeddings, and as many layers as the requested size allows. Values are random bf16
bit patterns with a weight-like exponent range: finite, no denormals, and far cheaper to
generate than randn. Files are reused when they already exist with the right size and layout.
"""

from __future__ import annotations

import json
import os

import torch

from merger.formats.safetensors import SafetensorsWriter
from merger.writer import LocalFileSink

HIDDEN, FFN, VOCAB, HEADS = 2048, 5632, 32000, 16
BLOCK = 16 * 2**20  # elements generated at a time
LAYOUT_VERSION = "llama1"  # part of the reuse marker: a new layout regenerates the files


def _layers_for(size: int) -> int:
    per_layer = 2 * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN + 2 * HIDDEN)
    return max(1, (size - 2 * 2 * VOCAB * HIDDEN) // per_layer)


def _layout(size: int) -> list[tuple[str, str, tuple[int, ...]]]:
    entries: list[tuple[str, str, tuple[int, ...]]] = [("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN))]
    for i in range(_layers_for(size)):
        p = f"model.layers.{i}"
        entries += [(f"{p}.self_attn.{n}_proj.weight", "BF16", (HIDDEN, HIDDEN)) for n in "qkvo"]
        entries += [
            (f"{p}.mlp.gate_proj.weight", "BF16", (FFN, HIDDEN)),
            (f"{p}.mlp.up_proj.weight", "BF16", (FFN, HIDDEN)),
            (f"{p}.mlp.down_proj.weight", "BF16", (HIDDEN, FFN)),
            (f"{p}.input_layernorm.weight", "BF16", (HIDDEN,)),
            (f"{p}.post_attention_layernorm.weight", "BF16", (HIDDEN,)),
        ]
    entries += [("model.norm.weight", "BF16", (HIDDEN,)), ("lm_head.weight", "BF16", (VOCAB, HIDDEN))]
    return entries


def _config(size: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "num_hidden_layers": _layers_for(size),
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def _random_bf16(n: int, gen: torch.Generator) -> torch.Tensor:
    # Random sign and mantissa, exponent 2^-9..2^-1 like trained weights: no denormals, which
    # would make any CPU arithmetic (ours, naive, mergekit) unrealistically slow.
    bits = torch.randint(0, 1 << 16, (n,), dtype=torch.int32, generator=gen)
    exponent = 118 + (bits >> 8) % 9
    return ((bits & 0x807F) | (exponent << 7)).to(torch.int16).view(torch.bfloat16)


def write_checkpoint(path: str, size: int, seed: int) -> None:
    entries = _layout(size)
    gen = torch.Generator().manual_seed(seed)
    writer = SafetensorsWriter(path, LocalFileSink(path, fsync=False), entries, {"format": "pt"})
    try:
        for _name, _dtype, shape in entries:
            n = 1
            for d in shape:
                n *= d
            for start in range(0, n, BLOCK):
                k = min(BLOCK, n - start)
                t = _random_bf16(k, gen)
                writer.write(t.view(torch.uint8).numpy())
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def make_checkpoints(directory: str, count: int, size: int) -> list[str]:
    """``count`` checkpoints of about ``size`` bytes each, in ``directory/ckpt-<i>/model.safetensors``."""
    paths = []
    expected: int | None = None
    for i in range(count):
        d = os.path.join(directory, f"ckpt-{i}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "model.safetensors")
        marker = path + f".{LAYOUT_VERSION}-size-{size}"
        if not (os.path.exists(path) and os.path.exists(marker)):
            write_checkpoint(path, size, seed=i)
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(_config(size), f, indent=2)
            open(marker, "w").close()
        expected = expected or os.path.getsize(path)
        paths.append(path)
    return paths
