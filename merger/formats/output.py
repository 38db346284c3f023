"""The writing side of the format seam: the output formats a merge can be written in.

An output format module (``safetensors``: :mod:`merger.formats.safetensors`, ``torch_dist``:
:mod:`merger.formats.dcp_writer`) defines:

- ``OUT_FORMAT``: its name, what ``plan_merge(out_format=...)`` and ``wsm merge --out-format`` take;
- ``shard_name(index, count)``: the name of output file ``index`` of ``count``;
- ``records(plan, shard)``: the :class:`OutRecord` s of one output file, in write order;
- ``file_size(plan, shard)``: that file's exact size, known before anything is written;
- ``open_file(plan, shard, sink)``: a :class:`FileWriter` streaming the file into a sink;
- ``metadata_files(plan, provenance)``: the small files written once every data file is
  complete (the safetensors index; DCP's ``.metadata``, ``common.pt``, ``metadata.json``): the
  only step of a split merge that does not write data.

The engine computes every record's bytes in order, in slices (blocks of a chunk or of a tensor's
rows), and hands them to the file's writer, which adds what its format puts around them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

OUT_FORMATS: dict[str, str] = {
    "safetensors": "merger.formats.safetensors",
    "torch_dist": "merger.formats.dcp_writer",
}
"""Output format name -> the module that writes it."""
DEFAULT_OUT_FORMAT = "safetensors"
"""What a merge writes unless asked otherwise: loadable by transformers, mergekit, vLLM."""


def check_out_format(name: str) -> str:
    """``name`` if it is an output format; a one-line error listing them otherwise."""
    from merger.errors import MergeError

    if name not in OUT_FORMATS:
        raise MergeError(f"output format {name!r} is not one of {', '.join(OUT_FORMATS)}")
    return name


@dataclass(frozen=True)
class OutRecord:
    """One record of an output file: a whole tensor, one chunk of a tensor, or a byte item."""

    name: str
    """Tensor or item name."""
    dtype: str
    """Output dtype code (``BF16``...); empty for a byte item."""
    shape: tuple[int, ...]
    """Shape of the data written: the whole tensor, or the chunk."""
    offsets: tuple[int, ...] | None = None
    """Where the chunk sits in the global tensor; None for a whole tensor or a byte item."""
    item_bytes: int | None = None
    """For a byte item (copied verbatim from the newest checkpoint): its length."""

    @property
    def is_item(self) -> bool:
        return self.item_bytes is not None


class FileWriter(Protocol):
    """One output file being written into a sink; :meth:`commit` checks it is complete."""

    name: str
    size: int
    """The file's final size in bytes."""

    def write_record(self, record: int, data: memoryview, *, first: bool, last: bool) -> None:
        """Append a slice of record ``record`` (records in order; ``first``/``last`` slice of it)."""
        ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


def output_module(name: str) -> ModuleType:
    """The module writing output format ``name``."""
    return importlib.import_module(OUT_FORMATS[check_out_format(name)])
