"""The checkpoint store: layout, manifests and atomic publish of every wsm artifact (docs/STORE.md)."""

from __future__ import annotations

from typing import Any

from wsm.settings import Settings, get_settings
from wsm.store import layout
from wsm.store.errors import (
    ArtifactExistsError,
    ArtifactNotFoundError,
    IntegrityError,
    ManifestError,
    StoreError,
)
from wsm.store.files import FileStore
from wsm.store.manifests import (
    SCHEMA_VERSION,
    CheckpointManifest,
    Checksums,
    EvalManifest,
    FileEntry,
    Manifest,
    ModelManifest,
    PinManifest,
    RunManifest,
    SourceCheckpoint,
    Window,
)
from wsm.store.names import (
    InvalidNameError,
    checkpoint_name,
    parse_checkpoint_name,
    validate_name,
)
from wsm.store.publish import Publisher
from wsm.store.retention import RetentionPolicy, select_deletions
from wsm.store.store import RunContents, Store


def open_store(url: str | None = None, *, settings: Settings | None = None, **storage_options: Any) -> Store:
    """The store of this process: ``url`` or ``WSM_STORE_URL``, S3 options from settings."""
    settings = settings or get_settings()
    return Store(url or settings.store_url, settings=settings, **storage_options)


__all__ = [
    "SCHEMA_VERSION",
    "ArtifactExistsError",
    "ArtifactNotFoundError",
    "CheckpointManifest",
    "Checksums",
    "EvalManifest",
    "FileEntry",
    "FileStore",
    "IntegrityError",
    "InvalidNameError",
    "Manifest",
    "ManifestError",
    "ModelManifest",
    "PinManifest",
    "Publisher",
    "RetentionPolicy",
    "RunContents",
    "RunManifest",
    "SourceCheckpoint",
    "Store",
    "StoreError",
    "Window",
    "checkpoint_name",
    "layout",
    "open_store",
    "parse_checkpoint_name",
    "select_deletions",
    "validate_name",
]
