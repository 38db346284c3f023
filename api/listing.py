"""A short-lived cache of run and checkpoint listings for resolving ``POST /anneal``.

Listing a run means reading every checkpoint manifest: the dominant cost of a request once the
broker is fast. A stale listing is safe: the worker re-checks that each chosen checkpoint still
exists with the same sha256 (merger/store_io.py, ``check_sources``) and fails the job clearly if
not; a new checkpoint is seen within ``ttl_s``. Read endpoints do not use this cache.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from wsm.store import CheckpointManifest, RunManifest, Store


class CachedListing:
    """``list_runs`` and ``list_checkpoints`` of ``store``, each cached for ``ttl_s`` seconds."""

    def __init__(self, store: Store, ttl_s: float = 2.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cache: dict[Any, tuple[float, Any]] = {}

    def _get(self, key: Any, load: Any) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = load()
        with self._lock:
            self._cache[key] = (now, value)
        return value

    def invalidate(self) -> None:
        """Forget every cached listing (a run was registered, or an external run gained checkpoints)."""
        with self._lock:
            self._cache.clear()

    def list_runs(self) -> list[RunManifest]:
        runs: list[RunManifest] = self._get("runs", self.store.list_runs)
        return runs

    def list_checkpoints(self, run: str) -> list[CheckpointManifest]:
        ckpts: list[CheckpointManifest] = self._get(
            ("checkpoints", run), lambda: self.store.list_checkpoints(run)
        )
        return ckpts
