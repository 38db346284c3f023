"""Checkpoint formats behind one seam (:mod:`merger.formats.base`): one module per format.

A format module defines ``FORMAT`` (its name), ``PRIORITY`` (detection order, lower first),
``detect(uri, storage_options) -> bool`` and ``open_checkpoint(uri, storage_options, *, sha256,
extra) -> CheckpointLayout``. Modules are discovered here, so adding a format is adding its module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import lru_cache
from types import ModuleType
from typing import Any

from merger.errors import MergeError
from merger.formats.base import ByteItem, CheckpointLayout, FileInfo, TensorChunk, TensorEntry

__all__ = [
    "ByteItem",
    "CheckpointLayout",
    "FileInfo",
    "TensorChunk",
    "TensorEntry",
    "formats",
    "open_checkpoint",
]

_NOT_FORMATS = frozenset({"base", "dtypes", "sources", "output", "torch_save", "dcp_writer"})


@lru_cache(maxsize=1)
def formats() -> dict[str, ModuleType]:
    """Every format module by name, in detection order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_FORMATS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "FORMAT") and hasattr(module, "open_checkpoint"):
            found.append(module)
    found.sort(key=lambda m: (getattr(m, "PRIORITY", 100), m.FORMAT))
    return {m.FORMAT: m for m in found}


def open_checkpoint(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    format: str | None = None,
    sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> CheckpointLayout:
    """The layout of checkpoint ``uri`` (reading metadata only), in ``format`` or the first that detects it."""
    available = formats()
    if format is not None:
        if format not in available:
            raise MergeError(f"unknown checkpoint format {format!r}; known: {', '.join(available)}")
        chosen = available[format]
    else:
        detected = next((m for m in available.values() if m.detect(uri, storage_options)), None)
        if detected is None:
            raise MergeError(f"{uri}: not a checkpoint in any known format ({', '.join(available)})")
        chosen = detected
    layout: CheckpointLayout = chosen.open_checkpoint(uri, storage_options, sha256=sha256, extra=extra)
    return layout
