"""Cleanup of what killed writers leave behind; nothing here is ever visible to readers.

Three kinds of leftovers: hidden staging/trash entries (local ``.tmp-*``/``.trash-*``), artifact
directories holding data but no manifest (object stores: a publish that died before its manifest
PUT), and incomplete S3 multipart uploads. Only leftovers untouched for ``older_than`` seconds go,
so pick it longer than the slowest publish.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from wsm.store import backend, layout

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
