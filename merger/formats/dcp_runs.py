"""Where an external training run keeps its DCP checkpoints, and how many tokens each one has seen.

:func:`discover` recognises, among the children of a run's checkpoint directory:

- Megatron-LM: ``iter_<7 digits>/`` (next to ``latest_checkpointed_iteration.txt``);
- torchtitan: ``step-<N>/``;
- OLMo-core: ``step<N>/model_and_optim/``.

It makes one recursive listing (one paginated request on object stores) and counts only complete
checkpoints: the DCP ``.metadata`` is written last, after every rank's data; Megatron also needs
``common.pt``. :func:`megatron_tokens` turns a Megatron iteration into tokens from the arguments
saved in ``common.pt``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from merger.errors import MergeError
from merger.formats.base import CheckpointLayout
from merger.formats.dcp import COMMON_NAME, METADATA_NAME
from merger.formats.sources import get_fs, is_remote, join_uri, local_path

MEGATRON_TRACKER = "latest_checkpointed_iteration.txt"

Framework = Literal["megatron", "torchtitan", "olmo-core"]

# (framework, checkpoint directory pattern, path from it to the DCP directory)
_LAYOUTS: tuple[tuple[Framework, re.Pattern[str], tuple[str, ...]], ...] = (
    ("megatron", re.compile(r"iter_(\d{7})"), ()),
    ("torchtitan", re.compile(r"step-(\d+)"), ()),
    ("olmo-core", re.compile(r"step(\d+)"), ("model_and_optim",)),
)


@dataclass(frozen=True)
class DiscoveredCheckpoint:
    """One complete checkpoint of a run."""

    step: int
    """Training step (Megatron: iteration) the checkpoint was taken after."""
    uri: str
    """The DCP directory, ready for :func:`merger.formats.dcp.open_dcp`."""
    framework: Framework
    """Which directory layout it was found in."""


def _relative_files(root_uri: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """Every file under ``root_uri``, relative to it with ``/`` separators: one listing."""
    if not is_remote(root_uri):
        root = local_path(root_uri)
        if not os.path.isdir(root):
            raise MergeError(f"{root_uri}: no such directory")
        out: list[str] = []
        for dirpath, dirnames, names in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            if rel == ".":  # only checkpoint directories are walked: a wrong root costs one listing
                dirnames[:] = [d for d in dirnames if any(p.fullmatch(d) for _, p, _ in _LAYOUTS)]
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            out.extend(base + n for n in names)
        return out
    fs, path = get_fs(root_uri, storage_options)
    path = path.rstrip("/")
    fs.invalidate_cache(path)
    return [p[len(path) + 1 :] for p in fs.find(path, withdirs=False) if p.startswith(path + "/")]


def discover(root_uri: str, storage_options: Mapping[str, Any] | None = None) -> list[DiscoveredCheckpoint]:
    """The complete checkpoints directly under ``root_uri``, by step; a step found twice is an error."""
    files = set(_relative_files(str(root_uri), storage_options))
    found: dict[int, DiscoveredCheckpoint] = {}
    for rel in sorted(files):
        parts = rel.split("/")
        for framework, pattern, inner in _LAYOUTS:
            m = pattern.fullmatch(parts[0])
            if not m or tuple(parts[1:]) != (*inner, METADATA_NAME):
                continue
            dcp_dir = "/".join(parts[:-1])
            if framework == "megatron" and f"{dcp_dir}/{COMMON_NAME}" not in files:
                continue
            ck = DiscoveredCheckpoint(int(m.group(1)), join_uri(str(root_uri), dcp_dir), framework)
            if ck.step in found:
                raise MergeError(f"{root_uri}: step {ck.step} is both {found[ck.step].uri} and {ck.uri}")
            found[ck.step] = ck
    return [found[s] for s in sorted(found)]


def megatron_tokens(layout: CheckpointLayout) -> int:
    """Tokens a Megatron checkpoint has trained on: iteration x global_batch_size x seq_length.

    The three come from ``common.pt`` (see :func:`merger.formats.dcp.open_dcp`). A batch-size
    ramp-up makes the product wrong, so a saved ``rampup_batch_size`` is refused like a missing value.
    """
    md = layout.metadata
    args = md.get("args") or {}
    raw = {"iteration": md.get("iteration"), **{k: args.get(k) for k in ("global_batch_size", "seq_length")}}
    values: dict[str, int] = {
        k: v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0
    }
    missing = [k for k in raw if k not in values]
    hint = "give the tokens per step explicitly"
    if missing:
        raise MergeError(f"{layout.uri}: common.pt does not give {', '.join(missing)}; {hint}")
    if args.get("rampup_batch_size"):
        raise MergeError(
            f"{layout.uri}: trained with rampup_batch_size={args['rampup_batch_size']}, so tokens are not "
            f"iteration x global_batch_size x seq_length; {hint}"
        )
    return values["iteration"] * values["global_batch_size"] * values["seq_length"]
