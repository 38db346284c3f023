"""Merging from and into the checkpoint store (docs/STORE.md).

Inputs: the run's checkpoints are listed, theory's :func:`select_checkpoints` picks the window
and weights, and each chosen checkpoint becomes a :class:`CheckpointRef` whose files are read in
place: mmap on local stores, ranged GETs on S3 (never a download). Sizes are checked against the
manifests first (``store.verify(full=False)``) and their sha256 is carried into the provenance.
Output: streamed straight into ``store.publish_model(...)`` (multipart upload on S3), so the
model appears atomically, with its ``ModelManifest`` (sources, curve, window, timings) written last.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from merger.engine import ProgressFn, finalize_index, run_shards
from merger.errors import MergeError
from merger.inputs import INDEX_NAME, SINGLE_NAME, CheckpointRef, resolve_checkpoint
from merger.manifest import build_manifest
from merger.plan import MergePlan, plan_merge
from merger.stats import MergeStats
from theory import CurveSpec, Selection, format_tokens, select_checkpoints
from wsm.store import CheckpointManifest, ModelManifest, SourceCheckpoint, Store, Window, layout

log = logging.getLogger(__name__)


def _uri(store: Store, relpath: str) -> str:
    if store.is_local:
        path = store.local_path(relpath)
        assert path is not None
        return path
    return str(store.fs.unstrip_protocol(store.full_path(relpath)))


def storage_options(store: Store) -> dict[str, Any]:
    """fsspec options that rebuild the store's filesystem (endpoint, credentials) from a URI."""
    return {} if store.is_local else dict(getattr(store.fs, "storage_options", {}) or {})


def checkpoint_ref(store: Store, manifest: CheckpointManifest) -> CheckpointRef:
    """A checkpoint of the store as a merge input (headers read by ranged reads)."""
    names = {f.name for f in manifest.files}
    main = INDEX_NAME if INDEX_NAME in names else SINGLE_NAME
    if main not in names:
        raise MergeError(f"{manifest.dir}: checkpoint has neither {SINGLE_NAME} nor {INDEX_NAME}")
    weight_files = sorted(n for n in names if n.endswith(".safetensors"))
    store.verify(manifest, full=False, names=weight_files)  # one listing: catches truncation
    if main == SINGLE_NAME:
        sha = manifest.file(SINGLE_NAME).sha256
    else:
        import hashlib

        lines = "".join(f"{n} {manifest.file(n).sha256}\n" for n in weight_files)
        sha = hashlib.sha256(lines.encode()).hexdigest()
    return resolve_checkpoint(
        _uri(store, manifest.path(main)),
        storage_options(store),
        sha256=sha,
        extra={"run": manifest.run, "tokens": manifest.tokens},
    )


def select(
    store: Store,
    run: str,
    curve: CurveSpec,
    window: int | str,
    *,
    interval: int | str | None = None,
    count: int | None = None,
    end: int | str | None = None,
) -> tuple[Selection, dict[int, CheckpointManifest]]:
    """theory's selection over the run's published checkpoints."""
    available = {m.tokens: m for m in store.list_checkpoints(run)}
    if not available:
        raise MergeError(f"run {run!r} has no published checkpoints in {store.url}")
    sel = select_checkpoints(available, curve, window, interval=interval, count=count, end=end)
    return sel, available


def plan_from_store(
    store: Store,
    run: str,
    curve: CurveSpec,
    window: int | str,
    *,
    interval: int | str | None = None,
    count: int | None = None,
    end: int | str | None = None,
    **plan_kwargs: Any,
) -> MergePlan:
    """Select the window's checkpoints, weight them by ``curve`` and plan their merge."""
    sel, manifests = select(store, run, curve, window, interval=interval, count=count, end=end)
    refs = [checkpoint_ref(store, manifests[t]) for t in sel.tokens]
    provenance = {"run": run, "store": store.url, **sel.to_dict(), "curve_spec": _curve_dict(curve)}
    return plan_merge(refs, [float(c) for c in sel.c], provenance=provenance, **plan_kwargs)


def _curve_dict(curve: CurveSpec) -> dict[str, Any]:
    return {**curve.to_dict(), "label": curve.label()}


def default_model_name(plan: MergePlan) -> str:
    p = plan.provenance
    return f"anneal-{p['curve_spec']['name']}-{format_tokens(int(p['window']))}-at-{format_tokens(int(p['window_end']))}"


def publish_merge(
    store: Store,
    plan: MergePlan,
    *,
    name: str | None = None,
    overwrite: bool = False,
    on_progress: ProgressFn | None = None,
    **kwargs: Any,
) -> tuple[ModelManifest, MergeStats]:
    """Execute ``plan`` (made by :func:`plan_from_store`) into ``runs/<run>/models/<name>``."""
    p = plan.provenance
    run = str(p["run"])
    name = name or default_model_name(plan)
    dtype = plan.main_dtype
    w_of = {c["tokens"]: c["w"] for c in p["checkpoints"]}
    sources = [
        SourceCheckpoint(
            tokens=ck.extra["tokens"], sha256=ck.sha256 or "", c=c, w=w_of.get(ck.extra["tokens"]) or 0.0
        )
        for ck, c in zip(plan.inputs, plan.weights, strict=True)
    ]
    with store.publish_model(
        run,
        name,
        kind="anneal",
        tokens=int(p["window_end"]),
        dtype=dtype,
        overwrite=overwrite,
        curve=p["curve_spec"],
        window=Window(start_tokens=int(p["window_start"]), end_tokens=int(p["window_end"])),
        sources=sources,
    ) as pub:

        class _Sink:
            """Adapts the publisher's hashing writer (close = complete the upload)."""

            def __init__(self, filename: str) -> None:
                self._w = pub.open(filename)

            def write(self, data: memoryview) -> int | None:
                return self._w.write(data)

            def commit(self) -> None:
                self._w.close()

            def abort(self) -> None:
                self._w.abort()

        stats = run_shards(
            plan,
            range(len(plan.shards)),
            None,
            open_sink=_Sink,
            on_progress=on_progress,
            hash_output=False,
            **kwargs,
        )
        index = finalize_index(plan)
        if index is not None:
            pub.write_bytes(INDEX_NAME, json.dumps(index, indent=2).encode())
        record = build_manifest(plan, stats)
        pub.update(
            timings={k: float(v) for k, v in stats.timings.items()},
            bytes_read=stats.bytes_read,
            config={"accumulate": plan.accumulate, "weights": list(plan.weights), "merge": record},
        )
    assert pub.manifest is not None
    log.info("published %s in %.1fs", layout.model_dir(run, name), stats.seconds)
    return pub.manifest, stats
