"""Shared helpers of the merger tests: random checkpoints, sharded saves, a float64 reference."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

State = dict[str, torch.Tensor]


def random_state(seed: int, dtype: torch.dtype = torch.bfloat16, *, big: int = 3000) -> State:
    """A small model: float tensors of ``dtype`` (one with > ``big`` rows), a float32 norm,
    an int64 buffer identical across seeds, and an empty tensor."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(big, 16, generator=g).to(dtype),
        "layer.0.weight": torch.randn(33, 17, generator=g).to(dtype),
        "layer.0.norm": (torch.rand(17, generator=g) + 0.5).float(),
        "position_ids": torch.arange(64, dtype=torch.int64),
        "empty": torch.zeros(0, 4, dtype=dtype),
        "scalar": torch.randn((), generator=g).to(dtype),
    }


def save(path: str | os.PathLike[str], state: State) -> str:
    save_file(state, str(path))
    return str(path)


def save_sharded(directory: str | os.PathLike[str], state: State, parts: int = 2) -> str:
    """HF-style shards + ``model.safetensors.index.json``; returns the index path."""
    os.makedirs(directory, exist_ok=True)
    names = sorted(state)
    groups = [names[i::parts] for i in range(parts)]
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        save_file({n: state[n] for n in group}, os.path.join(directory, fname))
        weight_map.update({n: fname for n in group})
    index = os.path.join(directory, "model.safetensors.index.json")
    with open(index, "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    return index


def reference(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The merge in float64 with plain torch (non-float tensors: the first checkpoint's)."""
    out = {}
    for name, t in states[0].items():
        if t.is_floating_point():
            out[name] = sum(
                (w * s[name].double() for w, s in zip(weights, states, strict=True)),
                torch.zeros(t.shape, dtype=torch.float64),
            )
        else:
            out[name] = t
    return out


def load_output(directory: str | os.PathLike[str]) -> State:
    """All tensors of a merge output directory (single file or shards)."""
    d = str(directory)
    single = os.path.join(d, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    out: State = {}
    for s in shards:
        out.update(load_file(os.path.join(d, s)))
    return out


def read_tree(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file of a directory by name (manifest excluded: it holds timings)."""
    d = str(directory)
    return {n: Path(d, n).read_bytes() for n in sorted(os.listdir(d)) if n != "merge_manifest.json"}
