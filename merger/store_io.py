"""Merging from and into the checkpoint store (docs/STORE.md): the one road from a window to a model.

Both ``wsm merge --run`` and the anneal service go through these functions, so the same window of
the same run gets the same selection, the same plan and the same model name.

1. :func:`select`: theory's :func:`~theory.select_checkpoints` over the run's published
   checkpoints, returned as a typed :class:`~merger.provenance.AnnealSelection` (with each
   checkpoint's weights digest from its manifest).
2. :func:`check_sources` + :func:`plan_selection`: the selected checkpoints, still published with
   the same digests, become merge inputs read in place (mmap locally, ranged GETs on S3; never a
   download), sizes checked against the manifests first.
3. :func:`publish_merge` (one process) or :func:`publish_parts` (a split merge's shards, already
   written) publish atomically through ``store.publish_model`` with the ``ModelManifest`` last,
   in either output format: safetensors (``model.safetensors`` or shards + index) or
   ``torch_dist`` in Megatron-LM's layout, as the store keeps Megatron checkpoints:
   ``latest_checkpointed_iteration.txt`` and ``iter_<N>/`` (``__<k>_0.distcp``, ``common.pt``,
   ``metadata.json``, ``.metadata``), which ``dist_checkpointing.load`` reads as is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from merger import external
from merger.engine import ProgressFn, check_outputs, metadata_files, run_shards
from merger.errors import MergeError, SourcesChangedError
from merger.formats import CheckpointLayout, open_checkpoint
from merger.formats.dcp_writer import TRACKER_NAME, megatron_iteration_dir
from merger.manifest import build_manifest
from merger.plan import MergePlan, plan_merge
from merger.provenance import AnnealSelection
from merger.stats import MergeStats
from theory import CurveSpec, format_tokens, select_checkpoints
from wsm.store import ArtifactNotFoundError, CheckpointManifest, ModelManifest, Store, layout
from wsm.store.publish import HashingWriter
from wsm.store.publish import Publisher as StorePublisher

log = logging.getLogger(__name__)

COPY_BLOCK = 8 * 2**20


class Listing(Protocol):
    """What selecting needs from the store: a :class:`Store`, or the API's short-lived cache of it."""

    def list_checkpoints(self, run: str) -> list[CheckpointManifest]: ...


def _uri(store: Store, relpath: str, *, directory: bool = False) -> str:
    if store.is_local:
        path = store.full_path(relpath) if directory else store.local_path(relpath)
        assert path is not None
        return path
    return str(store.fs.unstrip_protocol(store.full_path(relpath)))


def storage_options(store: Store) -> dict[str, Any]:
    """fsspec options that rebuild the store's filesystem (endpoint, credentials) from a URI."""
    return {} if store.is_local else dict(getattr(store.fs, "storage_options", {}) or {})


def weight_files(manifest: CheckpointManifest | ModelManifest) -> tuple[str, list[str]]:
    """The checkpoint's main weights file (``model.safetensors`` or the HF index) and its safetensors
    files; for Megatron's ``torch_dist`` layout the DCP directory (``iter_<N>``) and every file in it.

    Other files of a checkpoint (optimizer moments, RNG state) are never merge inputs; inside a DCP
    directory the reader skips the optimizer's keys.
    """
    names = {f.name for f in manifest.files}
    dcp = layout.dcp_dir_of(names)
    if dcp is not None:
        return dcp, sorted(n for n in names if n.startswith(f"{dcp}/"))
    if layout.MODEL_FILE in names:
        return layout.MODEL_FILE, [layout.MODEL_FILE]
    if layout.MODEL_INDEX_FILE in names:
        shards = sorted(n for n in names if n.startswith("model") and n.endswith(".safetensors"))
        return layout.MODEL_INDEX_FILE, shards
    raise MergeError(
        f"{manifest.dir}: checkpoint has neither {layout.MODEL_FILE} nor {layout.MODEL_INDEX_FILE}"
    )


def weights_sha256(manifest: CheckpointManifest | ModelManifest) -> str:
    """The digest of a checkpoint's weights: its file's sha256, or that of ``name sha256`` lines of its
    shards (or of the files of its DCP directory).

    A checkpoint of an external run has the identity digest of its DCP directory (merger/external.py).
    """
    if isinstance(manifest, CheckpointManifest) and manifest.location is not None:
        return manifest.location.identity
    main, files = weight_files(manifest)
    if main == layout.MODEL_FILE:
        return manifest.file(main).sha256
    lines = "".join(f"{n} {manifest.file(n).sha256}\n" for n in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def checkpoint_ref(store: Store, manifest: CheckpointManifest | ModelManifest) -> CheckpointLayout:
    """A checkpoint (or model) of the store as a merge input (headers read by ranged reads); one in
    Megatron's layout resolves to its DCP directory (a ``--out-format torch_dist`` merge is one too).

    Each file carries its manifest entry, so the engine verifies every block it reads against the
    checksums written with it (manifests of schema 1 have none: the merge manifest then says
    ``verified: false`` for that input).
    """
    if isinstance(manifest, CheckpointManifest) and manifest.location is not None:
        return external.open_location(store, manifest)  # an external run's checkpoint, read where it lies
    main, files = weight_files(manifest)
    store.verify(manifest, full=False, names=files)  # one listing: catches truncation
    dcp = main not in (layout.MODEL_FILE, layout.MODEL_INDEX_FILE)
    ref = open_checkpoint(
        _uri(store, f"{manifest.dir}/{main}" if dcp else manifest.path(main), directory=dcp),
        storage_options(store),
        sha256=weights_sha256(manifest),
        extra={"run": manifest.run, "tokens": manifest.tokens},
    )
    by_name = {n: manifest.file(n) for n in files}
    base = _uri(store, manifest.dir, directory=True).replace(os.sep, "/").rstrip("/") + "/"
    attached = []
    for f in ref.files:
        uri = f.uri.replace(os.sep, "/")
        name = uri[len(base) :] if uri.startswith(base) else uri.rsplit("/", 1)[-1]
        if name not in by_name:
            raise MergeError(f"{manifest.dir}: weights file {name} is not listed in its manifest")
        attached.append(dataclasses.replace(f, entry=by_name[name]))
    ref.files = attached
    return ref


def select(
    listing: Listing,
    run: str,
    curve: CurveSpec,
    window: int | str,
    *,
    interval: int | str | None = None,
    count: int | None = None,
    end: int | str | None = None,
) -> AnnealSelection:
    """theory's selection over the run's published checkpoints (raises ``TheoryError`` on a bad window)."""
    available = {m.tokens: m for m in listing.list_checkpoints(run)}
    if not available:
        raise MergeError(f"run {run!r} has no published checkpoints yet")
    sel = select_checkpoints(available, curve, window, interval=interval, count=count, end=end)
    return AnnealSelection.of(run, sel, {t: weights_sha256(available[t]) for t in sel.tokens})


def check_sources(store: Store, selection: AnnealSelection) -> dict[int, CheckpointManifest]:
    """The selection's checkpoints, each still published with the digest it was selected with."""
    out = {}
    for src in selection.sources:
        try:
            manifest = store.get_checkpoint(selection.run, src.tokens)
        except ArtifactNotFoundError as e:
            raise SourcesChangedError(
                f"checkpoint {format_tokens(src.tokens)} of run {selection.run!r} is gone: {e}"
            ) from e
        if weights_sha256(manifest) != src.sha256:
            raise SourcesChangedError(
                f"checkpoint {format_tokens(src.tokens)} of run {selection.run!r} was replaced since it was selected"
            )
        out[src.tokens] = manifest
    return out


def plan_selection(store: Store, selection: AnnealSelection, **plan_kwargs: Any) -> MergePlan:
    """Plan the merge of a selection (headers only), after checking its sources are unchanged."""
    manifests = check_sources(store, selection)
    refs = [checkpoint_ref(store, manifests[t]) for t in selection.tokens]
    return plan_merge(refs, selection.weights, selection=selection, **plan_kwargs)


def published_model(store: Store, selection: AnnealSelection, name: str) -> ModelManifest | None:
    """The model ``name`` if an earlier attempt (or the same merge asked another way) published it."""
    try:
        model = store.get_model(selection.run, name)
    except ArtifactNotFoundError:
        return None
    if [(s.tokens, s.sha256) for s in model.sources] != [(s.tokens, s.sha256) for s in selection.sources]:
        raise MergeError(f"{model.dir} exists but was merged from other checkpoints; delete it to re-run")
    return model


def _store_name(plan: MergePlan, filename: str) -> str:
    """Where an output file goes in the model directory: a ``torch_dist`` output in Megatron-LM's
    layout (``iter_<N>/<file>`` beside the tracker, as the trainer's checkpoints, so
    ``layout.dcp_dir_of`` finds it); safetensors files at the top."""
    if plan.out_format != "torch_dist":
        return filename
    return f"{megatron_iteration_dir(plan)[0]}/{filename}"


def _open(pub: StorePublisher[ModelManifest], plan: MergePlan, filename: str) -> HashingWriter:
    name = _store_name(plan, filename)
    return pub.open_in_tree(name) if "/" in name else pub.open(name)


def _publish(
    store: Store,
    plan: MergePlan,
    name: str | None,
    write: Callable[[StorePublisher[ModelManifest]], MergeStats],
    *,
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
) -> tuple[ModelManifest, MergeStats]:
    """Publish a merge of a selection as ``runs/<run>/models/<name>``: files by ``write``, then index and manifest."""
    sel = plan.selection
    if sel is None:
        raise MergeError("only a merge of a run's window can be published to the store")
    name = name or sel.model_name(plan.out_format)
    with store.publish_model(
        sel.run,
        name,
        kind="anneal",
        tokens=sel.window_end,
        dtype=plan.main_dtype,
        overwrite=overwrite,
        curve={**sel.curve.model_dump(mode="json"), "label": sel.curve_label},
        window=sel.window_range,
        sources=list(sel.sources),
    ) as pub:
        stats = write(pub)
        # Metadata last (index; DCP's common.pt, metadata.json, then .metadata), data never re-read.
        for filename, data in metadata_files(plan).items():
            with _open(pub, plan, filename) as f:
                f.write(data)
        if plan.out_format == "torch_dist":
            pub.write_bytes(TRACKER_NAME, megatron_iteration_dir(plan)[1].encode())
        pub.update(
            timings={k: float(v) for k, v in stats.timings.items()},
            bytes_read=stats.bytes_read,
            config={
                "accumulate": plan.accumulate,
                "weights": list(plan.weights),
                "format": plan.out_format,
                **(config or {}),
                "merge": build_manifest(plan, stats),
            },
        )
    assert pub.manifest is not None
    log.info("published %s in %.1fs", layout.model_dir(sel.run, name), stats.seconds)
    return pub.manifest, stats


def publish_merge(
    store: Store,
    plan: MergePlan,
    *,
    name: str | None = None,
    overwrite: bool = False,
    on_progress: ProgressFn | None = None,
    **kwargs: Any,
) -> tuple[ModelManifest, MergeStats]:
    """Execute ``plan`` (from :func:`plan_selection`) streaming straight into the store."""

    def write(pub: StorePublisher[ModelManifest]) -> MergeStats:
        class _Sink:
            """Adapts the publisher's hashing writer (close = complete the upload)."""

            def __init__(self, filename: str) -> None:
                self._w = _open(pub, plan, filename)

            def write(self, data: memoryview) -> int | None:
                return self._w.write(data)

            def commit(self) -> None:
                self._w.close()

            def abort(self) -> None:
                self._w.abort()

        return run_shards(
            plan,
            range(len(plan.shards)),
            None,
            open_sink=_Sink,
            on_progress=on_progress,
            hash_output=False,
            **kwargs,
        )

    return _publish(store, plan, name, write, overwrite=overwrite)


def publish_parts(
    store: Store, plan: MergePlan, scratch: str, part_stats: Sequence[MergeStats], *, name: str | None = None
) -> ModelManifest:
    """The final step of a split merge: check every shard the parts wrote, then publish them atomically."""

    def write(pub: StorePublisher[ModelManifest]) -> MergeStats:
        stats = MergeStats.combine(list(part_stats))
        check_outputs(plan, scratch)
        written = {str(f["name"]): f.get("sha256") for f in stats.files}
        for shard in plan.shards:
            with (
                open(os.path.join(scratch, shard.filename), "rb") as src,
                _open(pub, plan, shard.filename) as dst,
            ):
                while block := src.read(COPY_BLOCK):
                    dst.write(block)
            entry = next(f for f in pub.files if f.name == _store_name(plan, shard.filename))
            # The parts hashed what they wrote: a shard that changed on the scratch disk since is
            # refused here, before the manifest makes anything visible.
            expected = written.get(shard.filename)
            if expected and entry.sha256 != expected:
                raise MergeError(
                    f"{os.path.join(scratch, shard.filename)}: sha256 {entry.sha256} differs from the "
                    f"{expected} its part wrote; the scratch copy is corrupt, nothing was published"
                )
        return stats

    manifest, _ = _publish(store, plan, name, write, config={"parts": len(part_stats)})
    return manifest
