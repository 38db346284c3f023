"""JSON form of a :class:`~merger.plan.MergePlan`, so a plan made once can be shipped to workers.

Layouts travel with the plan: a worker executing a part re-opens the files but does not re-read
or re-validate their metadata (the planner did), and sizes are re-checked when data is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from merger.formats.base import ByteItem, CheckpointLayout, FileInfo, TensorChunk, TensorEntry
from merger.provenance import AnnealSelection
from wsm.store.manifests import FileEntry

if TYPE_CHECKING:
    from merger.plan import MergePlan

FORMAT_VERSION = 3
"""3 added each file's store manifest entry and ``allow_nonfinite``, then the output format, the
newest input and byte items per file; older plans (version 2, or 3 without those) still load, as
safetensors merges."""
READABLE_VERSIONS = (2, 3)


def _layout_to_dict(c: CheckpointLayout) -> dict[str, Any]:
    return {
        "uri": c.uri,
        "format": c.format,
        "sha256": c.sha256,
        "extra": c.extra,
        "metadata": c.metadata,
        "skipped": c.skipped,
        "files": [
            [f.uri, f.size, f.layout_sha256, f.entry.model_dump(mode="json") if f.entry else None]
            for f in c.files
        ],
        "tensors": [
            [
                t.name,
                t.dtype,
                list(t.shape),
                [[list(k.offsets), list(k.sizes), k.file, k.byte_offset, k.nbytes] for k in t.chunks],
            ]
            for t in c.tensors.values()
        ],
        "items": [[i.name, i.file, i.byte_offset, i.nbytes] for i in c.items.values()],
    }


def _file_from_list(f: list[Any]) -> FileInfo:
    uri, size, layout_sha256 = f[:3]
    entry = FileEntry.model_validate(f[3]) if len(f) > 3 and f[3] is not None else None
    return FileInfo(uri, int(size), layout_sha256, entry)


def _layout_from_dict(d: Mapping[str, Any], storage_options: Mapping[str, Any]) -> CheckpointLayout:
    tensors = [
        TensorEntry(
            name,
            dtype,
            tuple(shape),
            tuple(TensorChunk(tuple(o), tuple(s), f, b, n) for o, s, f, b, n in chunks),
        )
        for name, dtype, shape, chunks in d["tensors"]
    ]
    items = [ByteItem(name, f, b, n) for name, f, b, n in d["items"]]
    return CheckpointLayout(
        uri=d["uri"],
        format=d["format"],
        files=[_file_from_list(f) for f in d["files"]],
        tensors={t.name: t for t in tensors},
        items={i.name: i for i in items},
        metadata=dict(d["metadata"]),
        skipped=list(d["skipped"]),
        sha256=d.get("sha256"),
        extra=dict(d.get("extra") or {}),
        storage_options=dict(storage_options),
    )


def plan_to_dict(plan: MergePlan) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "inputs": [_layout_to_dict(c) for c in plan.inputs],
        "weights": list(plan.weights),
        "tensors": [[t.name, list(t.shape), t.in_dtype, t.out_dtype] for t in plan.tensors],
        "shards": [
            {"filename": s.filename, "tensors": list(s.tensors), "items": list(s.items)} for s in plan.shards
        ],
        "accumulate": plan.accumulate,
        "chunk_elems": plan.chunk_elems,
        "storage_options": dict(plan.storage_options),
        "metadata": dict(plan.metadata),
        "selection": plan.selection.model_dump(mode="json") if plan.selection else None,
        "allow_nonfinite": plan.allow_nonfinite,
        "out_format": plan.out_format,
        "newest": plan.newest,
    }


def plan_from_dict(d: Mapping[str, Any]) -> MergePlan:
    from merger.plan import MergePlan, ShardPlan, TensorPlan

    if d.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"unsupported merge plan format {d.get('format_version')!r}")
    options = dict(d["storage_options"])
    return MergePlan(
        inputs=tuple(_layout_from_dict(c, options) for c in d["inputs"]),
        weights=tuple(float(w) for w in d["weights"]),
        tensors=tuple(TensorPlan(t[0], tuple(t[1]), t[2], t[3]) for t in d["tensors"]),
        shards=tuple(
            ShardPlan(s["filename"], tuple(s["tensors"]), tuple(s.get("items", ()))) for s in d["shards"]
        ),
        accumulate=d["accumulate"],
        chunk_elems=int(d["chunk_elems"]),
        storage_options=options,
        metadata=dict(d["metadata"]),
        selection=AnnealSelection.model_validate(d["selection"]) if d.get("selection") else None,
        allow_nonfinite=bool(d.get("allow_nonfinite", False)),
        out_format=d.get("out_format", "safetensors"),
        newest=int(d.get("newest", len(d["inputs"]) - 1)),
    )
