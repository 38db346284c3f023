"""Cleanup of what killed writers leave behind; nothing here is ever visible to readers.

Three kinds of leftovers: hidden staging/trash entries (local ``.tmp-*``/``.trash-*``), artifact
directories holding data but no manifest (object stores: a publish that died before its manifest
PUT), and incomplete S3 multipart uploads.

Two ways to find them. :func:`cleanup_dead_writers` is prompt: a restarted trainer or worker
removes at once the local hidden entries whose writer, named in the entry (wsm/store/owner.py), is
certainly dead. :func:`cleanup_stale` is the backstop for everything else (other hosts, object
stores, entries of older versions): only leftovers untouched for ``older_than`` seconds go, so pick
it longer than the slowest publish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from wsm.store import backend, layout, owner

if TYPE_CHECKING:
    from wsm.store.store import Store

log = logging.getLogger(__name__)

_HIDDEN = (backend.TMP_PREFIX, backend.TRASH_PREFIX)


def cleanup_stale(store: Store, older_than_s: float) -> list[str]:
    """Remove stale leftovers under the store root; returns store-relative paths removed."""
    cutoff = time.time() - older_than_s
    fs, root = store.fs, store.root
    try:
        infos: dict[str, dict[str, Any]] = fs.find(root, withdirs=store.is_local, detail=True)
    except FileNotFoundError:
        infos = {}
    hidden: dict[str, float] = {}  # hidden entry -> newest mtime of it and everything inside
    artifacts: dict[str, list[Any]] = {}  # artifact dir -> [has manifest, newest mtime]
    for full, info in infos.items():
        rel = str(full)[len(root) + 1 :]
        parts = rel.split("/")
        # Unknown times count as "now": never delete what we cannot date.
        t = backend.mtime(info) or time.time()
        idx = next((i for i, p in enumerate(parts) if p.startswith(_HIDDEN)), None)
        if idx is not None:
            key = "/".join(parts[: idx + 1])
            hidden[key] = max(hidden.get(key, 0.0), t)
            continue
        adir = layout.artifact_dir_of(rel)
        if adir is None or info.get("type") != "file":
            continue
        entry = artifacts.setdefault(adir, [False, 0.0])
        entry[0] = entry[0] or rel == f"{adir}/{layout.MANIFEST}"
        entry[1] = max(entry[1], t)
    removed = [key for key, t in hidden.items() if t < cutoff]
    removed += [adir for adir, (has_manifest, t) in artifacts.items() if not has_manifest and t < cutoff]
    for rel in removed:
        log.info("cleanup: removing stale %s", rel)
        backend.rm_quiet(fs, f"{root}/{rel}", recursive=True)
    removed += _abort_stale_uploads(store, cutoff)
    return sorted(removed)


def _abort_stale_uploads(store: Store, cutoff: float) -> list[str]:
    """S3 only: abort multipart uploads under the root that were started before ``cutoff``."""
    fs = store.fs
    if not hasattr(fs, "list_multipart_uploads"):
        return []
    bucket, _, prefix = store.root.partition("/")
    aborted = []
    try:
        uploads = fs.list_multipart_uploads(bucket)
    except Exception as e:  # permissions may forbid it; the bucket lifecycle rule is the fallback
        log.warning("cleanup: cannot list multipart uploads of %s: %s", bucket, e)
        return []
    for up in uploads:
        key = str(up.get("Key", ""))
        started = up.get("Initiated")
        if prefix and not key.startswith(prefix + "/"):
            continue
        if not isinstance(started, datetime) or started.timestamp() >= cutoff:
            continue
        with contextlib.suppress(Exception):
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=up["UploadId"])
            rel = key[len(prefix) + 1 :] if prefix else key
            aborted.append(f"{rel} (multipart upload)")
            log.info("cleanup: aborted stale multipart upload of %s", key)
    return aborted


_ARTIFACT_KINDS = frozenset({layout.CHECKPOINTS, layout.MODELS, layout.EVALS})


def cleanup_dead_writers(store: Store, under: str = "") -> list[str]:
    """Remove hidden entries under ``under`` (store-relative) whose writer is certainly dead.

    Local stores only (an object store's staging is its final prefix, cleared by the next publish
    of the same artifact, and otherwise by :func:`cleanup_stale`). Walks directories, not
    artifacts: it never descends into a published artifact, so it is cheap enough for start-up.
    Returns the store-relative paths removed.
    """
    if not store.is_local:
        return []
    root = str(store.root)
    top = os.path.join(root, under) if under else root
    removed: list[str] = []
    stack = [top]
    while stack:
        path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:  # gone meanwhile, or not a directory
            continue
        parts = os.path.relpath(path, root).split(os.sep)
        # runs/<run>/<kind>/: its visible children are artifacts, never entered
        in_artifact_kind = len(parts) == 3 and parts[0] == layout.RUNS and parts[2] in _ARTIFACT_KINDS
        for entry in entries:
            if entry.name.startswith(_HIDDEN):
                who = owner.owner_of(entry.name)
                if who is None or not who.is_dead():
                    continue
                rel = os.path.relpath(entry.path, root)
                log.info("cleanup: removing %s left by dead writer pid %d", rel, who.pid)
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                removed.append(rel)
            elif entry.is_dir(follow_symlinks=False) and not in_artifact_kind:
                stack.append(entry.path)
    return sorted(removed)
