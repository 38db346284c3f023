"""Synthetic bf16 checkpoints for the merge benchmark, written by streaming (no model in memory).

Layout of each checkpoint, like a small LLM: one embedding of a quarter of the size, 64 MB
layer matrices, a float32 norm per layer, and an int64 buffer identical in every checkpoint.
Values are random bf16 bit patterns with a weight-like exponent range: finite, no denormals, and
far cheaper to generate than randn. Files are reused when they already exist with the right size.
"""

from __future__ import annotations

import os

import torch

from merger.writer import LocalFileSink, ShardWriter

LAYER_BYTES = 64 * 2**20
BLOCK = 16 * 2**20  # elements generated at a time


def _layout(size: int) -> list[tuple[str, str, tuple[int, ...]]]:
    hidden = 2048
    embed_rows = max(1, size // 4 // (2 * hidden))
    entries: list[tuple[str, str, tuple[int, ...]]] = [("embed.weight", "BF16", (embed_rows, hidden))]
    left = size - embed_rows * hidden * 2
    i = 0
    while left >= LAYER_BYTES:
        rows = LAYER_BYTES // (2 * hidden)
        entries.append((f"layers.{i}.weight", "BF16", (rows, hidden)))
        entries.append((f"layers.{i}.norm", "F32", (hidden,)))
        left -= LAYER_BYTES + 4 * hidden
        i += 1
    if left > 2 * hidden:
        entries.append(("tail.weight", "BF16", (left // (2 * hidden), hidden)))
    entries.append(("position_ids", "I64", (4096,)))
    return entries


def _random_bf16(n: int, gen: torch.Generator) -> torch.Tensor:
    # Random sign and mantissa, exponent 2^-9..2^-1 like trained weights: no denormals, which
    # would make any CPU arithmetic (ours, naive, mergekit) unrealistically slow.
    bits = torch.randint(0, 1 << 16, (n,), dtype=torch.int32, generator=gen)
    exponent = 118 + (bits >> 8) % 9
    return ((bits & 0x807F) | (exponent << 7)).to(torch.int16).view(torch.bfloat16)


def write_checkpoint(path: str, size: int, seed: int) -> None:
    entries = _layout(size)
    gen = torch.Generator().manual_seed(seed)
    writer = ShardWriter(path, LocalFileSink(path, fsync=False), entries, {"format": "pt"})
    try:
        for _name, dtype, shape in entries:
            n = 1
            for d in shape:
                n *= d
            for start in range(0, n, BLOCK):
                k = min(BLOCK, n - start)
                if dtype == "BF16":
                    t = _random_bf16(k, gen)
                elif dtype == "F32":
                    t = torch.rand(k, generator=gen) + 0.5
                else:
                    t = torch.arange(start, start + k, dtype=torch.int64)
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
        marker = path + f".size-{size}"
        if not (os.path.exists(path) and os.path.exists(marker)):
            write_checkpoint(path, size, seed=i)
            open(marker, "w").close()
        expected = expected or os.path.getsize(path)
        paths.append(path)
    return paths
