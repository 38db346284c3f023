"""The provenance record of a merge: inputs (with sha256), weights, curve and window, output, cost.

Input sha256: store checkpoints carry it in their manifest (free). Each input also says whether
the merge verified every byte it read from it (``verified``): true for store checkpoints whose
manifest has checksums, false for anything else (plain files, DCP directories of external runs).
For other inputs we hash the files, but only when asked (``hash_inputs``, on by default in
``wsm merge``): hashing costs ~0.6 s/GB of CPU, more than the merge itself, so the engine API
leaves it off. It runs in a thread alongside the merge (the page cache serves both). Without it
each input still records its size and the sha256 of its header, which pins names, shapes, dtypes
and offsets. A sharded checkpoint's sha256 is that of its sorted ``name sha256`` lines.

:func:`provenance` is the part that depends on the plan alone (inputs, weights, curve, window,
output, the copy policy, what was skipped): a ``torch_dist`` output also carries it in
``common.pt`` (key ``wsm_merge``), identical whichever worker writes it.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import wsm
from merger.formats import CheckpointLayout
from merger.formats.sources import is_remote, open_source
from merger.plan import MergePlan
from merger.stats import MergeStats

MANIFEST_NAME = "merge_manifest.json"
HASH_BLOCK = 16 * 2**20


def sha256_uri(uri: str, storage_options: dict[str, Any], size: int) -> str:
    """sha256 of a whole file, read in blocks (ranged reads for remote files)."""
    h = hashlib.sha256()
    if not is_remote(uri):
        with open(uri[len("file://") :] if uri.startswith("file://") else uri, "rb", buffering=0) as f:
            while block := f.read(HASH_BLOCK):
                h.update(block)
        return h.hexdigest()
    source = open_source(uri, storage_options, size)
    for offset in range(0, size, HASH_BLOCK):
        h.update(source.read(offset, min(HASH_BLOCK, size - offset)))
    return h.hexdigest()


def checkpoint_sha256(file_hashes: dict[str, str], ckpt: CheckpointLayout) -> str:
    if len(ckpt.files) == 1:
        return file_hashes[ckpt.files[0].uri]
    lines = "".join(f"{os.path.basename(f.uri)} {file_hashes[f.uri]}\n" for f in ckpt.files)
    return hashlib.sha256(lines.encode()).hexdigest()


def hash_inputs_async(plan: MergePlan) -> Future[dict[str, str]]:
    """Hash every input file that has no known sha256, in one background thread."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsm-hash")

    def work() -> dict[str, str]:
        out: dict[str, str] = {}
        for ck in plan.inputs:
            if ck.sha256 is None:
                files = {f.uri: sha256_uri(f.uri, dict(plan.storage_options), f.size) for f in ck.files}
                out[ck.uri] = checkpoint_sha256(files, ck)
        return out

    fut = pool.submit(work)
    pool.shutdown(wait=False)
    return fut


def input_record(
    ck: CheckpointLayout, c: float, sha256: str | None, verified: bool = False
) -> dict[str, Any]:
    return {
        "uri": ck.uri,
        "sha256": ck.sha256 or sha256,
        "c": c,
        "verified": verified,
        "format": ck.format,
        "files": [{"uri": f.uri, "size": f.size, "layout_sha256": f.layout_sha256} for f in ck.files],
        **ck.extra,
    }


POLICY = {
    "floating": "weighted sum of every checkpoint, accumulated in the plan's accumulate dtype",
    "non_floating": "copied from the newest checkpoint, never averaged",
    "byte_items": "copied from the newest checkpoint (torch_dist output; safetensors cannot hold them)",
    "optimizer_and_rng": "never merged; listed under skipped",
}
"""What the merge does with each kind of state (docs/FORMATS.md, "What is merged")."""


def _skipped_summary(keys: list[str]) -> dict[str, int]:
    from merger.formats.dcp import key_kind

    out: dict[str, int] = {}
    for k in keys:
        kind = key_kind(k)
        out[kind] = out.get(kind, 0) + 1
    return out


def provenance(
    plan: MergePlan, input_hashes: dict[str, str] | None = None, verified: list[bool] | None = None
) -> dict[str, Any]:
    """Where a merge comes from and what it did, as plain data: the plan, and once the merge ran,
    whether each input's bytes were verified against its store manifest (``verified``; without
    it, as in ``common.pt``, written before anyone knows, the records leave it out)."""
    hashes = input_hashes or {}
    sel = plan.selection
    w_by_tokens = {src.tokens: src.w for src in sel.sources} if sel else {}
    inputs = []
    for ck, c, ok in zip(plan.inputs, plan.weights, verified or [False] * len(plan.inputs), strict=True):
        rec = input_record(ck, c, hashes.get(ck.uri), ok)
        if verified is None:
            del rec["verified"]
        if ck.extra.get("tokens") in w_by_tokens:
            rec["w"] = w_by_tokens[ck.extra["tokens"]]
        if "iteration" in ck.metadata:
            rec["iteration"] = ck.metadata["iteration"]
        inputs.append(rec)
    return {
        "kind": "wsm-merge",
        "code_version": wsm.__version__,
        "inputs": inputs,
        "weights": list(plan.weights),
        "curve": sel.curve.model_dump(mode="json") if sel else None,
        "window": sel.window_range.model_dump(mode="json") if sel else None,
        "selection": sel.model_dump(mode="json") if sel else None,
        "out_format": plan.out_format,
        "dtype": sorted({t.out_dtype for t in plan.tensors}),
        "accumulate": plan.accumulate,
        "allow_nonfinite": plan.allow_nonfinite,
        "tensors": len(plan.tensors),
        "policy": POLICY,
        "copied_from": plan.newest_input.uri,
        "skipped_counts": _skipped_summary(plan.skipped),
        "dropped_items": plan.dropped_items,
    }


def build_manifest(
    plan: MergePlan,
    stats: MergeStats,
    input_hashes: dict[str, str] | None = None,
    *,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON written next to a merged model (``merge_manifest.json``): the provenance, the
    keys skipped, the output files and what the merge cost."""
    return {
        **provenance(plan, input_hashes, stats.verified_inputs or [False] * len(plan.inputs)),
        "skipped": plan.skipped,
        "output": {
            "format": plan.out_format,
            "sharded": plan.sharded,
            "total_size": plan.output_bytes,
            "files": stats.files,
        },
        "bytes_read": stats.bytes_read,
        "timings": {k: round(v, 4) for k, v in stats.timings.items()},
        "stats": stats.to_dict() | {"files": None},
        **(extra or {}),
    }
