"""External runs: checkpoints written by a team's own trainer (Megatron-LM, torchtitan, OLMo-core), read in place.

:func:`register` records where a run lives (an :class:`~wsm.store.manifests.ExternalSource` in its
run manifest) and copies nothing but an optional ``tokenizer.json``. :func:`sync` lists the source
once (:func:`merger.formats.dcp_runs.discover`) and, for each complete checkpoint the store does
not know yet, publishes a ``CheckpointManifest`` with no files of its own and a ``location``: the
DCP directory, its files with their sizes, and an identity digest (:func:`identity`). From then on
selection, merging, the API and evaluation treat the checkpoint like any other; the merge reads
its tensors by byte range where it lies (:func:`open_location`), and only the annealed model is
written, to the store.

The identity is the sha256 of the directory's ``.metadata`` digest plus every file's name and
size. torch writes a fresh ``save_id`` into ``.metadata`` on every save, so a checkpoint saved
again under the same name gets another identity. It is not a hash of the data: a record rewritten
in place with the same size and the same ``.metadata`` goes unnoticed.

Tokens: step x ``tokens_per_step`` when the run has one, else Megatron's
iteration x global_batch_size x seq_length from ``common.pt``; torchtitan and OLMo-core record
neither, so their runs need ``tokens_per_step``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast, get_args

from merger.errors import MergeError, SourcesChangedError
from merger.formats import CheckpointLayout, open_checkpoint
from merger.formats.dcp import DcpSummary, summarize
from merger.formats.dcp_runs import DiscoveredCheckpoint, discover, megatron_tokens
from merger.formats.sources import is_remote, local_path, read_small
from theory import format_tokens
from wsm.settings import Settings
from wsm.store import ArtifactExistsError, ArtifactNotFoundError, CheckpointManifest, RunManifest, Store
from wsm.store import layout as store_layout
from wsm.store.backend import s3_options
from wsm.store.manifests import ExternalFile, ExternalLayout, ExternalLocation, ExternalSource
from wsm.store.names import validate_name

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = get_args(ExternalLayout)
"""The directory layouts an external run can have (merger/formats/dcp_runs.py)."""
IDENTITY_VERSION = "wsm-dcp-identity-v1"
MAX_TOKENIZER_BYTES = 256 * 2**20
REMOTE_PROTOCOLS = ("s3", "s3a")
DESCRIBE_WORKERS = 8  # new checkpoints summarised concurrently: S3 round trips bound a first sync


class ExternalRunError(MergeError):
    """An external run cannot be registered or synced; the message names the problem and the fix."""


@dataclass
class SyncReport:
    """What one :func:`sync` did."""

    run: str
    added: list[int] = field(default_factory=list)
    """Tokens of the checkpoints published by this sync."""
    removed: list[int] = field(default_factory=list)
    """Tokens of the checkpoints whose directory is gone from the source (their manifests were removed)."""
    replaced: list[int] = field(default_factory=list)
    """Tokens of the checkpoints saved again since they were registered (``recheck`` only)."""
    errors: list[str] = field(default_factory=list)
    """One line per checkpoint that could not be registered (skipped; the others are)."""
    checkpoints: int = 0
    """Checkpoints of the run in the store after the sync."""

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.replaced)


def source_options(settings: Settings, uri: str) -> dict[str, Any]:
    """fsspec options for an external URI: the store's S3 settings for ``s3://``, none for local paths."""
    if uri.startswith(("s3://", "s3a://")):
        return s3_options(settings)
    return {}


def normalize_uri(uri: str, what: str = "the run's source") -> str:
    """A local path made absolute (workers may run elsewhere than the registering shell), or an S3 URI.

    Other fsspec protocols (http, ftp...) are refused: a registration must not make the server
    fetch arbitrary URLs.
    """
    uri = uri.strip()
    if not uri:
        raise ExternalRunError(f"{what} is empty: give a directory or an s3:// URI")
    if is_remote(uri):
        if uri.split("://", 1)[0] not in REMOTE_PROTOCOLS:
            raise ExternalRunError(f"{what} {uri!r}: only local paths and s3:// URIs are supported")
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(local_path(uri)))


def identity(summary: DcpSummary) -> str:
    """The checkpoint's identity digest (module docstring): no tensor data is read."""
    lines = [IDENTITY_VERSION, f".metadata sha256 {hashlib.sha256(summary.metadata).hexdigest()}"]
    lines += [f"{name} {size}" for name, size in sorted(summary.sizes.items())]
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


@dataclass(frozen=True)
class _Described:
    """A discovered checkpoint, ready to become a CheckpointManifest."""

    tokens: int
    step: int
    location: ExternalLocation
    extra: dict[str, Any]


def _describe(ck: DiscoveredCheckpoint, source: ExternalSource, opts: Mapping[str, Any]) -> _Described:
    """Summarise one checkpoint (a listing, ``.metadata`` and Megatron's small files) and count its tokens."""
    summary = summarize(ck.uri, opts)
    if source.tokens_per_step is not None:
        tokens = ck.step * source.tokens_per_step
    elif source.layout == "megatron":
        tokens = megatron_tokens(
            CheckpointLayout(uri=ck.uri, format="dcp", files=[], tensors={}, metadata=summary.megatron)
        )
    else:
        raise ExternalRunError(_no_tokens(source.layout))
    location = ExternalLocation(
        uri=ck.uri,
        files=[ExternalFile(name=n, size=s) for n, s in sorted(summary.sizes.items())],
        identity=identity(summary),
    )
    extra: dict[str, Any] = {"framework": ck.framework}
    if summary.megatron:
        extra["megatron"] = summary.megatron
    return _Described(tokens, ck.step, location, extra)


def _no_tokens(layout: str) -> str:
    return (
        f"{layout} checkpoints do not record how many tokens they have seen: "
        "give the tokens per step (--tokens-per-step N, or tokens_per_step in POST /runs)"
    )


def _discover(source: ExternalSource | str, opts: Mapping[str, Any]) -> list[DiscoveredCheckpoint]:
    uri = source if isinstance(source, str) else source.uri
    try:
        return discover(uri, opts)
    except MergeError:
        raise
    except Exception as e:  # unreachable bucket, no or bad credentials (botocore's own errors), bad URI
        raise ExternalRunError(f"{uri}: cannot list the run's checkpoints ({type(e).__name__}: {e})") from e


def _choose_layout(uri: str, layout: str, found: list[DiscoveredCheckpoint]) -> str:
    if layout not in ("auto", *LAYOUTS):
        raise ExternalRunError(f"unknown layout {layout!r}; choose auto, {', '.join(LAYOUTS)}")
    frameworks = sorted({c.framework for c in found})
    if layout != "auto":
        if frameworks and layout not in frameworks:
            raise ExternalRunError(f"{uri}: holds {', '.join(frameworks)} checkpoints, no {layout} ones")
        return layout
    if not frameworks:
        raise ExternalRunError(
            f"{uri}: no complete checkpoint there yet ({', '.join(LAYOUTS)} layouts); give the layout "
            "(--layout) to register a run before its first checkpoint"
        )
    if len(frameworks) > 1:
        raise ExternalRunError(
            f"{uri}: holds {' and '.join(frameworks)} checkpoints; give the layout (--layout)"
        )
    return frameworks[0]


def _read_tokenizer(path: str, opts: Mapping[str, Any]) -> bytes:
    """A Hugging Face ``tokenizer.json`` (a file, or a directory holding one), checked to be one."""
    uri = normalize_uri(path, "the tokenizer")
    if not is_remote(uri) and os.path.isdir(uri):
        uri = os.path.join(uri, store_layout.TOKENIZER_FILE)
    try:
        if not is_remote(uri) and os.path.getsize(uri) > MAX_TOKENIZER_BYTES:
            raise ExternalRunError(f"tokenizer {path}: larger than {MAX_TOKENIZER_BYTES} bytes")
        data = read_small(uri, opts)
    except ExternalRunError:
        raise
    except Exception as e:  # missing file, unreachable bucket, no credentials
        raise ExternalRunError(f"tokenizer {path}: cannot be read ({type(e).__name__}: {e})") from e
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        parsed = None
    if not isinstance(parsed, dict) or "model" not in parsed:
        raise ExternalRunError(f"tokenizer {path}: not a Hugging Face tokenizer.json")
    return data


def register(
    store: Store,
    name: str,
    uri: str,
    *,
    layout: str = "auto",
    tokens_per_step: int | None = None,
    tokenizer: str | None = None,
    description: str = "",
    overwrite: bool = False,
) -> tuple[RunManifest, SyncReport]:
    """Register the external run ``name`` living at ``uri`` and publish its checkpoints' manifests.

    Everything is checked (the source lists, the layout is known, tokens can be counted, the
    tokenizer is one) before anything is written. ``overwrite`` re-registers an external run
    (e.g. to add a tokenizer); a run that wsm trained is never replaced.
    """
    validate_name(name, "run name")
    if tokens_per_step is not None and (isinstance(tokens_per_step, bool) or tokens_per_step <= 0):
        raise ExternalRunError(f"tokens per step must be a positive integer, not {tokens_per_step!r}")
    try:
        existing: RunManifest | None = store.get_run(name)
    except ArtifactNotFoundError:
        existing = None
    if existing is not None and not overwrite:
        raise ArtifactExistsError(store_layout.run_dir(name))
    if existing is not None and existing.source is None:
        raise ExternalRunError(f"run {name!r} was trained by wsm and cannot become an external run")
    uri = normalize_uri(uri)
    tokenizer = normalize_uri(tokenizer, "the tokenizer") if tokenizer is not None else None
    opts = source_options(store.settings, uri)
    found = _discover(uri, opts)
    chosen = _choose_layout(uri, layout, found)
    if chosen != "megatron" and tokens_per_step is None:
        raise ExternalRunError(f"{uri}: {_no_tokens(chosen)}")
    source = ExternalSource(
        uri=uri, layout=cast(ExternalLayout, chosen), tokens_per_step=tokens_per_step, tokenizer=tokenizer
    )
    mine = [c for c in found if c.framework == chosen]
    # Count tokens of every checkpoint now: a run whose tokens cannot be known is refused whole.
    described = _describe_all(source, mine, opts, strict=True)[0]
    tok_section: dict[str, Any] = {}
    if tokenizer is not None:
        data = _read_tokenizer(tokenizer, source_options(store.settings, tokenizer))
        path = f"{store_layout.run_dir(name)}/{store_layout.TOKENIZER_FILE}"
        store.write_bytes(path, data)
        tok_section = {"file": path, "sha256": hashlib.sha256(data).hexdigest(), "source": tokenizer}
    data_section: dict[str, Any] = {"valid_fraction": 0.0}  # wsm knows no held-out split of this corpus
    if tokens_per_step is not None:
        data_section["tokens_per_step"] = tokens_per_step
    run = store.create_run(
        name,
        tokenizer=tok_section,
        data=data_section,
        description=description or f"external {chosen} run at {uri}",
        overwrite=overwrite,
        source=source,
    )
    log.info("registered external run %s (%s at %s)", name, chosen, uri)
    known = (
        {m.location.uri for m in store.list_checkpoints(name) if m.location is not None}
        if existing
        else set()
    )
    new = [d for d in described if d.location.uri not in known]
    return run, _apply(store, run, source, new, [], found_uris={c.uri for c in mine})


def _describe_all(
    source: ExternalSource, found: list[DiscoveredCheckpoint], opts: Mapping[str, Any], *, strict: bool
) -> tuple[list[_Described], list[str]]:
    """Describe ``found`` (a few small reads each, concurrently); with ``strict`` the first failure
    raises, else failures become error lines."""

    def one(ck: DiscoveredCheckpoint) -> _Described | str:
        try:
            return _describe(ck, source, opts)
        except Exception as e:  # a checkpoint that cannot be read (or reached) now: named, never a traceback
            if strict:
                raise ExternalRunError(str(e)) from e
            return str(e) if ck.uri in str(e) else f"{ck.uri}: {e}"

    if not found:
        return [], []
    with ThreadPoolExecutor(max_workers=min(DESCRIBE_WORKERS, len(found))) as pool:
        results = list(pool.map(one, found))
    return [r for r in results if isinstance(r, _Described)], [r for r in results if isinstance(r, str)]


def _publish(store: Store, run: str, ck: _Described, *, overwrite: bool = False) -> None:
    with store.publish_checkpoint(run, ck.tokens, step=ck.step, extra=ck.extra, overwrite=overwrite) as pub:
        pub.update(location=ck.location)


def _apply(
    store: Store,
    run: RunManifest,
    source: ExternalSource,
    new: list[_Described],
    errors: list[str],
    *,
    found_uris: set[str],
    replaced: Sequence[_Described] = (),
) -> SyncReport:
    """Bring the store's checkpoints of ``run`` in line with the source: remove the gone, publish the new."""
    report = SyncReport(run=run.run, errors=list(errors))
    known = store.list_checkpoints(run.run)
    for m in known:
        if m.location is not None and m.location.uri not in found_uris:
            with contextlib.suppress(ArtifactNotFoundError):
                store.delete_checkpoint(run.run, m.tokens)
                report.removed.append(m.tokens)
                log.info("run %s: checkpoint %s is gone from %s", run.run, m.location.uri, source.uri)
    taken = {m.tokens: m for m in known if m.tokens not in report.removed}
    for ck in replaced:
        _publish(store, run.run, ck, overwrite=True)
        report.replaced.append(ck.tokens)
    for ck in new:
        other = taken.get(ck.tokens)
        if other is not None:
            where = other.location.uri if other.location is not None else other.dir
            report.errors.append(
                f"{ck.location.uri}: {format_tokens(ck.tokens)} tokens, like {where}; skipped"
            )
            continue
        try:
            _publish(store, run.run, ck)
        except ArtifactExistsError:
            continue  # another process synced the same checkpoint first
        taken[ck.tokens] = store.get_checkpoint(run.run, ck.tokens)
        report.added.append(ck.tokens)
    for line in report.errors:
        log.warning("run %s: %s", run.run, line)
    report.checkpoints = len(taken)
    if report.changed:
        log.info(
            "run %s synced from %s: %d new, %d gone, %d replaced; %d checkpoint(s)",
            run.run,
            source.uri,
            len(report.added),
            len(report.removed),
            len(report.replaced),
            report.checkpoints,
        )
    return report


def sync(store: Store, run: str | RunManifest, *, recheck: bool = False) -> SyncReport:
    """Publish manifests of the run's new checkpoints and drop those of checkpoints gone from its source.

    Costs one listing of the source (plus, per new checkpoint, one listing of its directory and
    its ``.metadata``). ``recheck`` also re-reads the ``.metadata`` of every known checkpoint and
    registers again those saved anew since (their identity changed).
    """
    manifest = store.get_run(run) if isinstance(run, str) else run
    source = manifest.source
    if source is None:
        raise ExternalRunError(f"run {manifest.run!r} was trained by wsm; only external runs are synced")
    opts = source_options(store.settings, source.uri)
    found = [c for c in _discover(source, opts) if c.framework == source.layout]
    known = {m.location.uri: m for m in store.list_checkpoints(manifest.run) if m.location is not None}
    fresh = [c for c in found if c.uri not in known]
    described, errors = _describe_all(source, fresh, opts, strict=False)
    replaced: list[_Described] = []
    if recheck:
        again, more = _describe_all(source, [c for c in found if c.uri in known], opts, strict=False)
        errors += more
        for ck in again:
            old = known[ck.location.uri]
            if old.location is not None and ck.location.identity != old.location.identity:
                if ck.tokens != old.tokens:
                    errors.append(
                        f"{ck.location.uri}: now counts {ck.tokens} tokens, was {old.tokens}; skipped"
                    )
                    continue
                replaced.append(ck)
    return _apply(
        store, manifest, source, described, errors, found_uris={c.uri for c in found}, replaced=replaced
    )


def open_location(store: Store, manifest: CheckpointManifest) -> CheckpointLayout:
    """The merge input of an external checkpoint, after checking it is still the one registered."""
    loc = manifest.location
    if loc is None:
        raise ExternalRunError(f"{manifest.dir}: not a checkpoint of an external run")
    opts = source_options(store.settings, loc.uri)
    try:
        now = identity(summarize(loc.uri, opts))
    except Exception as e:  # gone, truncated listing, unreachable bucket
        raise SourcesChangedError(
            f"checkpoint {format_tokens(manifest.tokens)} of run {manifest.run!r} is no longer readable at "
            f"{loc.uri}: {e}"
        ) from e
    if now != loc.identity:
        raise SourcesChangedError(
            f"checkpoint {format_tokens(manifest.tokens)} of run {manifest.run!r} was saved again at {loc.uri} "
            f"since it was registered; `wsm runs sync {manifest.run} --recheck` registers it anew"
        )
    return open_checkpoint(
        loc.uri,
        opts,
        format=loc.format,
        sha256=loc.identity,
        extra={"run": manifest.run, "tokens": manifest.tokens},
    )
