"""JSON form of a :class:`~merger.plan.MergePlan`, so a plan made once can be shipped to workers.

Headers travel with the plan: a worker executing a part re-opens the files but does not re-read
or re-validate their headers (the planner did), and sizes are re-checked when data is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from merger.inputs import CheckpointRef, FileRef, TensorLoc
from merger.safetensors_io import Header, TensorInfo

if TYPE_CHECKING:
    from merger.plan import MergePlan

FORMAT_VERSION = 1


def _header_to_dict(h: Header) -> dict[str, Any]:
    return {
        "data_offset": h.data_offset,
        "metadata": dict(h.metadata),
        "raw_sha256": h.raw_sha256,
        "tensors": [[t.name, t.dtype, list(t.shape), t.begin, t.end] for t in h.tensors.values()],
    }


def _header_from_dict(d: Mapping[str, Any]) -> Header:
    tensors = [TensorInfo(n, dt, tuple(s), b, e) for n, dt, s, b, e in d["tensors"]]
    return Header({t.name: t for t in tensors}, dict(d["metadata"]), int(d["data_offset"]), d["raw_sha256"])


def _ckpt_to_dict(c: CheckpointRef) -> dict[str, Any]:
    return {
        "uri": c.uri,
        "sha256": c.sha256,
        "extra": c.extra,
        "files": [{"uri": f.uri, "size": f.size, "header": _header_to_dict(f.header)} for f in c.files],
    }


def _ckpt_from_dict(d: Mapping[str, Any]) -> CheckpointRef:
    files = [FileRef(f["uri"], int(f["size"]), _header_from_dict(f["header"])) for f in d["files"]]
    tensors = {
        name: TensorLoc(i, info) for i, f in enumerate(files) for name, info in f.header.tensors.items()
    }
    return CheckpointRef(d["uri"], files, tensors, d.get("sha256"), dict(d.get("extra") or {}))


def plan_to_dict(plan: MergePlan) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "inputs": [_ckpt_to_dict(c) for c in plan.inputs],
        "weights": list(plan.weights),
        "tensors": [[t.name, list(t.shape), t.in_dtype, t.out_dtype] for t in plan.tensors],
        "shards": [{"filename": s.filename, "tensors": list(s.tensors)} for s in plan.shards],
        "accumulate": plan.accumulate,
        "chunk_elems": plan.chunk_elems,
        "storage_options": dict(plan.storage_options),
        "metadata": dict(plan.metadata),
        "provenance": dict(plan.provenance),
    }


def plan_from_dict(d: Mapping[str, Any]) -> MergePlan:
    from merger.plan import MergePlan, ShardPlan, TensorPlan

    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported merge plan format {d.get('format_version')!r}")
    return MergePlan(
        inputs=tuple(_ckpt_from_dict(c) for c in d["inputs"]),
        weights=tuple(float(w) for w in d["weights"]),
        tensors=tuple(TensorPlan(n, tuple(s), i, o) for n, s, i, o in d["tensors"]),
        shards=tuple(ShardPlan(s["filename"], tuple(s["tensors"])) for s in d["shards"]),
        accumulate=d["accumulate"],
        chunk_elems=int(d["chunk_elems"]),
        storage_options=dict(d["storage_options"]),
        metadata=dict(d["metadata"]),
        provenance=dict(d["provenance"]),
    )
