"""The ``Store``: one object for every read, listing and publish of wsm artifacts, on any backend.

Paths handed in and out are store-relative (``runs/r1/checkpoints/…/model.safetensors``) and are
validated, so nothing can address a file outside the root. Listings cost one listing request
plus one batched read of the manifests found; only entries with a valid manifest are returned.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from wsm.store import backend, layout, maintenance
from wsm.store.errors import ArtifactExistsError, ArtifactNotFoundError, ManifestError
from wsm.store.files import FileStore
from wsm.store.manifests import (
    CheckpointManifest,
    EvalManifest,
    ExternalSource,
    Manifest,
    ModelKind,
    ModelManifest,
    PinManifest,
    RunManifest,
    utcnow,
)
from wsm.store.names import is_checkpoint_name, validate_model_id, validate_name, validate_relpath
from wsm.store.publish import Publisher
from wsm.store.retention import RetentionPolicy, select_deletions

log = logging.getLogger(__name__)

# Metrics segments fetched per round trip when only the newest records are wanted.
METRICS_READ_BATCH = 16

M = TypeVar("M", bound=Manifest)
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class RunContents:
    """A consistent-enough snapshot of one run: whatever was complete at listing time."""

    run: RunManifest | None
    checkpoints: list[CheckpointManifest]
    models: list[ModelManifest]
    evals: list[EvalManifest]
    pins: list[PinManifest]


class Store(FileStore):
    """Artifacts of wsm under one root URL; see docs/STORE.md for layout, schema and guarantees."""

    # -- manifests (internal) --------------------------------------------------------------
    def _parse(self, model: type[M], path: str, data: bytes, expect_dir: str) -> M:
        try:
            manifest = model.model_validate_json(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "document"
            raise ManifestError(path, f"{where}: {first['msg']} ({e.error_count()} error(s))") from e
        if manifest.dir != expect_dir:
            raise ManifestError(path, f"describes {manifest.dir}")
        return manifest

    def _read_manifest(self, model: type[M], path: str, expect_dir: str) -> M:
        try:
            data = self.fs.cat_file(self.full_path(path))
        except FileNotFoundError as e:
            raise ArtifactNotFoundError(expect_dir) from e
        return self._parse(model, path, data, expect_dir)

    def _list_children(self, rel_dir: str) -> list[str]:
        """Names of the direct children of a directory (one request); hidden names skipped."""
        try:
            entries = self.fs.ls(self.full_path(rel_dir), detail=False)
        except FileNotFoundError:
            return []
        names = (str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return sorted(n for n in names if n and not n.startswith("."))

    def _find_manifest_dirs(self, rel_dir: str) -> list[str]:
        """Artifact names under ``rel_dir`` whose ``manifest.json`` exists: one recursive listing."""
        base = self.full_path(rel_dir)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        names = []
        for p in found:
            rest = str(p)[len(base) + 1 :].split("/")
            if len(rest) == 2 and rest[1] == layout.MANIFEST and not rest[0].startswith("."):
                names.append(rest[0])
        return sorted(names)

    def _load_many(self, model: type[M], dirs: list[str]) -> list[M]:
        """Read the manifests of artifact ``dirs`` in one batched call, skipping invalid ones."""
        items: list[tuple[type[Manifest], str, str]] = [(model, f"{d}/{layout.MANIFEST}", d) for d in dirs]
        return [m for m in self._load_batch(items) if isinstance(m, model)]

    def _load_batch(self, items: list[tuple[type[Manifest], str, str]]) -> list[Manifest]:
        """Parse ``(model, manifest path, expected dir)`` items from one ``fs.cat`` (concurrent GETs
        on s3fs); manifests deleted since the listing or invalid (logged) are skipped."""
        if not items:
            return []
        blobs = self.fs.cat([self.full_path(path) for _, path, _ in items], on_error="omit")
        out = []
        for model, path, expect_dir in items:
            data = blobs.get(self.full_path(path))
            if not isinstance(data, bytes):
                continue
            try:
                out.append(self._parse(model, path, data, expect_dir))
            except ManifestError as e:
                log.warning("skipping %s", e)
        return out

    def _delete_artifact(self, rel_dir: str) -> None:
        """Manifest first (the artifact vanishes atomically), then the data."""
        full = self.full_path(rel_dir)
        manifest = f"{full}/{layout.MANIFEST}"
        if not self.fs.exists(manifest):
            raise ArtifactNotFoundError(rel_dir)
        self.fs.rm_file(manifest)
        if self.is_local:
            backend.fsync_dir(full)
        backend.rm_quiet(self.fs, full, recursive=True)
        log.info("deleted %s", rel_dir)

    # -- runs ------------------------------------------------------------------------------
    def create_run(
        self,
        run: str,
        *,
        model: Mapping[str, Any] | None = None,
        tokenizer: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        schedule: Mapping[str, Any] | None = None,
        description: str = "",
        extra: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        source: ExternalSource | None = None,
    ) -> RunManifest:
        path = layout.run_manifest_path(run)
        if not overwrite and self.exists(path):
            raise ArtifactExistsError(layout.run_dir(run))
        manifest = RunManifest(
            run=run,
            model=dict(model or {}),
            tokenizer=dict(tokenizer or {}),
            data=dict(data or {}),
            schedule=dict(schedule or {}),
            description=description,
            extra=dict(extra or {}),
            source=source,
        )
        self.write_bytes(path, manifest.model_dump_json(indent=2).encode())
        return manifest

    def get_run(self, run: str) -> RunManifest:
        return self._read_manifest(RunManifest, layout.run_manifest_path(run), layout.run_dir(run))

    def list_runs(self) -> list[RunManifest]:
        runs = [r for r in self._list_children(layout.RUNS) if _valid(r)]
        return self._load_many(RunManifest, [layout.run_dir(r) for r in runs])

    def read_run(self, run: str) -> RunContents:
        """Everything of a run with one recursive listing and one batched manifest read."""
        base = layout.run_dir(run)
        full = self.full_path(base)
        try:
            found = self.fs.find(full)
        except FileNotFoundError:
            found = []
        collections: dict[str, type[Manifest]] = {
            layout.CHECKPOINTS: CheckpointManifest,
            layout.MODELS: ModelManifest,
            layout.EVALS: EvalManifest,
        }
        items: list[tuple[type[Manifest], str, str]] = []
        for p in found:
            parts = str(p)[len(full) + 1 :].split("/")
            if parts == [layout.MANIFEST]:
                items.append((RunManifest, f"{base}/{layout.MANIFEST}", base))
            elif (
                len(parts) == 3
                and parts[2] == layout.MANIFEST
                and parts[0] in collections
                and _valid(parts[1])
            ):
                if parts[0] != layout.CHECKPOINTS or is_checkpoint_name(parts[1]):
                    d = f"{base}/{parts[0]}/{parts[1]}"
                    items.append((collections[parts[0]], f"{d}/{layout.MANIFEST}", d))
            elif len(parts) == 2 and parts[0] == layout.PINS and _is_pin_file(parts[1]):
                items.append((PinManifest, f"{base}/{layout.PINS}/{parts[1]}", layout.pins_dir(run)))
        loaded = self._load_batch(items)
        runs = [m for m in loaded if isinstance(m, RunManifest)]
        return RunContents(
            run=runs[0] if runs else None,
            checkpoints=sorted(
                (m for m in loaded if isinstance(m, CheckpointManifest)), key=lambda m: m.tokens
            ),
            models=sorted(
                (m for m in loaded if isinstance(m, ModelManifest)), key=lambda m: (m.tokens, m.name)
            ),
            evals=sorted(
                (m for m in loaded if isinstance(m, EvalManifest)), key=lambda m: (m.created_at, m.name)
            ),
            pins=sorted((m for m in loaded if isinstance(m, PinManifest)), key=lambda m: m.job_id),
        )

    # -- checkpoints -----------------------------------------------------------------------
    def publish_checkpoint(
        self,
        run: str,
        tokens: int,
        *,
        step: int | None = None,
        extra: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Publisher[CheckpointManifest]:
        fields = {"run": run, "tokens": tokens, "step": step, "extra": dict(extra or {})}
        return Publisher(self, CheckpointManifest, layout.checkpoint_dir(run, tokens), fields, overwrite)

    def get_checkpoint(self, run: str, tokens: int) -> CheckpointManifest:
        d = layout.checkpoint_dir(run, tokens)
        return self._read_manifest(CheckpointManifest, f"{d}/{layout.MANIFEST}", d)

    def list_checkpoints(self, run: str) -> list[CheckpointManifest]:
        base = layout.checkpoints_dir(run)
        names = [n for n in self._find_manifest_dirs(base) if is_checkpoint_name(n)]
        found = self._load_many(CheckpointManifest, [f"{base}/{n}" for n in names])
        return sorted(found, key=lambda m: m.tokens)

    def latest_checkpoint(self, run: str) -> CheckpointManifest | None:
        found = self.list_checkpoints(run)
        return found[-1] if found else None

    def delete_checkpoint(self, run: str, tokens: int) -> None:
        self._delete_artifact(layout.checkpoint_dir(run, tokens))

    # -- models ----------------------------------------------------------------------------
    def publish_model(
        self,
        run: str,
        name: str,
        *,
        kind: ModelKind,
        tokens: int,
        dtype: str,
        overwrite: bool = False,
        **fields: Any,
    ) -> Publisher[ModelManifest]:
        if kind not in ModelManifest.KINDS:
            raise ValueError(f"model kind must be one of {ModelManifest.KINDS}, got {kind!r}")
        all_fields = {**fields, "run": run, "name": name, "kind": kind, "tokens": tokens, "dtype": dtype}
        pub = Publisher(self, ModelManifest, layout.model_dir(run, name), {}, overwrite)
        pub.update(**{k: v for k, v in all_fields.items() if k != "kind"})
        pub._fields["kind"] = kind  # reserved for update(); set once here
        return pub

    def get_model(self, run: str, name: str) -> ModelManifest:
        d = layout.model_dir(run, name)
        return self._read_manifest(ModelManifest, f"{d}/{layout.MANIFEST}", d)

    def list_models(self, run: str, kind: ModelKind | None = None) -> list[ModelManifest]:
        base = layout.models_dir(run)
        found = self._load_many(ModelManifest, [f"{base}/{n}" for n in self._find_manifest_dirs(base)])
        return sorted((m for m in found if kind is None or m.kind == kind), key=lambda m: (m.tokens, m.name))

    def delete_model(self, run: str, name: str) -> None:
        self._delete_artifact(layout.model_dir(run, name))

    # -- evaluations -----------------------------------------------------------------------
    def publish_eval(
        self, run: str, name: str, *, model_id: str, overwrite: bool = False, **fields: Any
    ) -> Publisher[EvalManifest]:
        validate_model_id(model_id)
        pub = Publisher(self, EvalManifest, layout.eval_dir(run, name), {}, overwrite)
        pub.update(**fields, run=run, name=name, model_id=model_id)
        return pub

    def get_eval(self, run: str, name: str) -> EvalManifest:
        d = layout.eval_dir(run, name)
        return self._read_manifest(EvalManifest, f"{d}/{layout.MANIFEST}", d)

    def list_evals(self, run: str, model_id: str | None = None) -> list[EvalManifest]:
        base = layout.evals_dir(run)
        found = self._load_many(EvalManifest, [f"{base}/{n}" for n in self._find_manifest_dirs(base)])
        return sorted(
            (e for e in found if model_id is None or e.model_id == model_id),
            key=lambda e: (e.created_at, e.name),
        )

    # -- metrics ---------------------------------------------------------------------------
    def append_metrics(self, run: str, records: Iterable[Mapping[str, Any]]) -> str:
        """Publish ``records`` as the next JSONL segment (one writer per run); returns its path."""
        body = "".join(json.dumps(dict(r), separators=(",", ":")) + "\n" for r in records).encode()
        seqs = self._segments(run)
        seq = seqs[-1] + 1 if seqs else 0
        for _ in range(100):
            path = layout.metrics_segment_path(run, seq)
            try:
                backend.atomic_write_bytes(self.fs, self.full_path(path), body, exclusive=True)
                return path
            except FileExistsError:
                seq += 1  # another writer took this number (local only)
        raise ArtifactExistsError(layout.metrics_dir(run))

    def read_metrics(self, run: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """A run's metrics records in order: all of them, or only the newest ``limit``.

        With a limit, segments are read newest first in batches and reading stops once enough
        records are in hand, so a dashboard polling a long run does not re-read its whole history.
        """
        if limit is not None and limit <= 0:
            return []
        paths = [self.full_path(layout.metrics_segment_path(run, s)) for s in self._segments(run)]
        batch = len(paths) if limit is None else METRICS_READ_BATCH
        chunks: list[list[dict[str, Any]]] = []
        held = 0
        while paths and (limit is None or held < limit):
            paths, wanted = paths[:-batch], paths[-batch:]
            blobs = self.fs.cat(wanted, on_error="omit")
            for p in reversed(wanted):
                data = blobs.get(p)
                if isinstance(data, bytes):
                    records = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
                    chunks.append(records)
                    held += len(records)
        out = [record for records in reversed(chunks) for record in records]
        return out if limit is None else out[-limit:]

    def _segments(self, run: str) -> list[int]:
        seqs = (layout.parse_segment_name(n) for n in self._list_children(layout.metrics_dir(run)))
        return sorted(s for s in seqs if s is not None)

    # -- records owned by the anneal use case (jobs, policies, grids), each a collection of JSON files
    def _save_record(self, path: str, record: BaseModel) -> None:
        self.write_bytes(path, record.model_dump_json(indent=2).encode())

    def _load_record(self, path: str, model: type[R], what: str) -> R:
        data = self.read_bytes(path)
        try:
            return model.model_validate_json(data)
        except ValueError as e:
            raise ManifestError(path, f"not a valid {what} ({e})") from None

    def _list_records(self, base: str, model: type[R], what: str) -> list[R]:
        names = [n for n in self._list_children(base) if n.endswith(".json")]
        blobs = self.fs.cat([self.full_path(f"{base}/{n}") for n in names], on_error="omit") if names else {}
        out = []
        for n in names:
            data = blobs.get(self.full_path(f"{base}/{n}"))
            if not isinstance(data, bytes):
                continue  # deleted since the listing
            try:
                out.append(model.model_validate_json(data))
            except ValueError as e:
                log.warning("skipping %s %s/%s: %s", what, base, n, e)
        return out

    def save_job(self, run: str, job_id: str, record: BaseModel) -> None:
        """Write a job record atomically (whole-file replace) as ``runs/<run>/jobs/<job_id>.json``."""
        self._save_record(layout.job_path(run, validate_name(job_id, "job id")), record)

    def load_job(self, run: str, job_id: str, model: type[R]) -> R:
        """The record of ``job_id`` parsed as ``model``; ``ArtifactNotFoundError`` if there is none."""
        return self._load_record(layout.job_path(run, validate_name(job_id, "job id")), model, "job record")

    def list_jobs(self, run: str, model: type[R]) -> list[R]:
        """Every readable job record of ``run`` (one listing, one batched read); unreadable ones are logged."""
        return self._list_records(layout.jobs_dir(run), model, "job record")

    def delete_job(self, run: str, job_id: str) -> None:
        backend.rm_quiet(self.fs, self.full_path(layout.job_path(run, validate_name(job_id, "job id"))))

    def save_policy(self, run: str, policy_id: str, record: BaseModel) -> None:
        """Write an annealing policy atomically as ``runs/<run>/policies/<policy_id>.json``."""
        self._save_record(layout.policy_path(run, policy_id), record)

    def load_policy(self, run: str, policy_id: str, model: type[R]) -> R:
        """The policy ``policy_id`` parsed as ``model``; ``ArtifactNotFoundError`` if there is none."""
        return self._load_record(layout.policy_path(run, policy_id), model, "policy")

    def list_policies(self, run: str, model: type[R]) -> list[R]:
        """Every readable policy of ``run`` (one listing, one batched read)."""
        return self._list_records(layout.policies_dir(run), model, "policy")

    def delete_policy(self, run: str, policy_id: str) -> None:
        backend.rm_quiet(self.fs, self.full_path(layout.policy_path(run, policy_id)))

    def save_grid(self, run: str, grid_id: str, record: BaseModel) -> None:
        """Write a grid of anneal jobs atomically as ``runs/<run>/grids/<grid_id>.json``."""
        self._save_record(layout.grid_path(run, grid_id), record)

    def load_grid(self, run: str, grid_id: str, model: type[R]) -> R:
        """The grid ``grid_id`` parsed as ``model``; ``ArtifactNotFoundError`` if there is none."""
        return self._load_record(layout.grid_path(run, grid_id), model, "grid")

    def list_grids(self, run: str, model: type[R]) -> list[R]:
        """Every readable grid of ``run`` (one listing, one batched read)."""
        return self._list_records(layout.grids_dir(run), model, "grid")

    # -- pins, retention, maintenance ------------------------------------------------------
    def pin(
        self, run: str, job_id: str, tokens: Iterable[int], *, ttl: timedelta | None = None
    ) -> PinManifest:
        """Protect checkpoints from retention until ``unpin`` (create before enqueueing the job)."""
        expires = utcnow() + ttl if ttl is not None else None
        pin = PinManifest(run=run, job_id=job_id, tokens=sorted(set(tokens)), expires_at=expires)
        self.write_bytes(layout.pin_path(run, job_id), pin.model_dump_json(indent=2).encode())
        return pin

    def unpin(self, run: str, job_id: str) -> None:
        backend.rm_quiet(self.fs, self.full_path(layout.pin_path(run, job_id)))

    def list_pins(self, run: str) -> list[PinManifest]:
        base = layout.pins_dir(run)
        names = [n for n in self._list_children(base) if _is_pin_file(n)]
        pins = self._load_batch([(PinManifest, f"{base}/{n}", base) for n in names])
        return sorted((p for p in pins if isinstance(p, PinManifest)), key=lambda p: p.job_id)

    def pinned_tokens(self, run: str, now: datetime | None = None) -> set[int]:
        return {t for p in self.list_pins(run) if p.active(now) for t in p.tokens}

    def apply_retention(
        self, run: str, policy: RetentionPolicy | None = None, *, dry_run: bool = False
    ) -> list[int]:
        """Delete checkpoints the policy (default: from settings) lets go; returns their tokens."""
        policy = policy or RetentionPolicy.from_settings(self.settings)
        if policy is None:
            return []
        tokens = [c.tokens for c in self.list_checkpoints(run)]
        doomed = select_deletions(tokens, policy, self.pinned_tokens(run))
        if dry_run:
            return doomed
        deleted = []
        for t in doomed:
            if t in self.pinned_tokens(run):  # re-read: a job may have been enqueued meanwhile
                continue
            with contextlib.suppress(ArtifactNotFoundError):
                self.delete_checkpoint(run, t)
                deleted.append(t)
        if deleted:
            log.info("retention on %s deleted %d checkpoint(s): %s", run, len(deleted), deleted)
        return deleted

    def cleanup_stale(self, older_than: timedelta | float = timedelta(hours=1)) -> list[str]:
        """Remove leftovers of killed writers older than ``older_than``; returns what was removed."""
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else float(older_than)
        return maintenance.cleanup_stale(self, seconds)

    def cleanup_dead_writers(self, under: str = "") -> list[str]:
        """Remove at once the hidden leftovers under ``under`` whose writer on this host is dead."""
        return maintenance.cleanup_dead_writers(self, validate_relpath(under) if under else "")


def _valid(name: str) -> bool:
    try:
        validate_name(name)
    except ValueError:
        return False
    return True


def _is_pin_file(name: str) -> bool:
    return name.endswith(".json") and _valid(name[: -len(".json")])
