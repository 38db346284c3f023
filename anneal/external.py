"""External runs in the use case's terms: registering, listing their sources again, and what can go wrong.

``POST /runs``, ``wsm runs add|sync``, ``POST /anneal``, ``wsm merge --run`` and the workers'
recovery sweep come here; merger/external.py does the work. A run's source is listed again only
when this process last listed it more than ``external_sync_ttl_s`` ago (:func:`refresh`), so a
request costs at most one listing of the source, and usually none.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from anneal.errors import RequestError
from merger import external
from merger.errors import MergeError
from merger.external import SyncReport as SyncReport  # re-exported: the API reads reports
from wsm.store import ArtifactExistsError, RunManifest, Store

log = logging.getLogger(__name__)

LAYOUT_CHOICES = ("auto", *external.LAYOUTS)


class InvalidSourceError(RequestError):
    """The run's source cannot be registered or listed: unknown layout, no tokens, unreadable place."""

    code = "invalid_source"


class RunExistsError(RequestError):
    """A run of that name is already in the store."""

    code = "run_exists"


class NotEvaluableError(RequestError):
    """An evaluation was asked for a run whose models wsm cannot evaluate (no tokenizer, no Megatron arguments)."""

    code = "not_evaluable"


class Runs(Protocol):
    """What :func:`refresh` needs to find a run's manifest: a :class:`Store` or the API's cached listing."""

    def list_runs(self) -> list[RunManifest]: ...


_synced: dict[tuple[str, str], float] = {}
_locks: dict[tuple[str, str], threading.Lock] = {}
_guard = threading.Lock()


def _key(store: Store, run: str) -> tuple[str, str]:
    return (str(store.url), run)


def _lock(key: tuple[str, str]) -> threading.Lock:
    with _guard:
        return _locks.setdefault(key, threading.Lock())


def register(
    store: Store,
    name: str,
    source: str,
    *,
    layout: str = "auto",
    tokens_per_step: int | None = None,
    tokenizer: str | None = None,
    description: str = "",
    overwrite: bool = False,
) -> tuple[RunManifest, SyncReport]:
    """Register an external run and publish the manifests of the checkpoints it has so far."""
    if layout not in LAYOUT_CHOICES:
        raise InvalidSourceError(
            f"unknown layout {layout!r}; choose {', '.join(LAYOUT_CHOICES)}", choices=LAYOUT_CHOICES
        )
    key = _key(store, name)
    with _lock(key):
        try:
            run, report = external.register(
                store,
                name,
                source,
                layout=layout,
                tokens_per_step=tokens_per_step,
                tokenizer=tokenizer,
                description=description,
                overwrite=overwrite,
            )
        except ArtifactExistsError:
            raise RunExistsError(
                f"run {name!r} exists already; choose another name (an external run can be registered "
                "again with overwrite)"
            ) from None
        except MergeError as e:
            raise InvalidSourceError(str(e)) from e
        _synced[key] = time.monotonic()
    return run, report


def sync(store: Store, run: RunManifest, *, recheck: bool = False) -> SyncReport:
    """List the run's source now and bring its checkpoints in the store up to date."""
    key = _key(store, run.run)
    with _lock(key):
        try:
            report = external.sync(store, run, recheck=recheck)
        except MergeError as e:
            raise InvalidSourceError(str(e)) from e
        _synced[key] = time.monotonic()
    return report


def refresh(store: Store, runs: Runs, run: str, ttl_s: float) -> bool:
    """Sync ``run`` if it is external and was last listed over ``ttl_s`` ago; True if checkpoints changed.

    A source that cannot be listed just now is logged, not raised: the request goes on with the
    checkpoints already known, and the merge re-checks each one it reads.
    """
    manifest = next((r for r in runs.list_runs() if r.run == run), None)
    if manifest is None or manifest.source is None:
        return False
    if time.monotonic() - _synced.get(_key(store, run), -1e18) < ttl_s:
        return False
    try:
        return sync(store, manifest).changed
    except InvalidSourceError as e:
        _synced[_key(store, run)] = time.monotonic()  # not again before the TTL
        log.warning("run %s: could not list its source: %s", run, e)
        return False


def sync_stale(store: Store, ttl_s: float) -> list[SyncReport]:
    """The workers' sweep: sync every external run last listed over ``ttl_s`` ago; never raises."""
    reports = []
    try:
        runs = [r for r in store.list_runs() if r.source is not None]
    except Exception as e:  # the sweep goes on; the next one tries again
        log.warning("external runs: cannot list runs: %s", e)
        return []
    for run in runs:
        if time.monotonic() - _synced.get(_key(store, run.run), -1e18) < ttl_s:
            continue
        try:
            reports.append(sync(store, run))
        except Exception as e:
            _synced[_key(store, run.run)] = time.monotonic()  # not again before the TTL
            log.warning("run %s: sync of %s failed: %s", run.run, run.source.uri if run.source else "?", e)
    return reports


def check_evaluable(run: RunManifest) -> None:
    """Refuse early an evaluation that cannot run: an external run needs a tokenizer and Megatron's arguments."""
    if run.source is None:
        return
    if run.source.layout != "megatron":
        raise NotEvaluableError(
            f"run {run.run!r} is a {run.source.layout} run: wsm evaluates external models only from "
            "Megatron's saved arguments (common.pt); ask without evaluation (evaluate=false, --no-eval)"
        )
    if not run.tokenizer.get("file"):
        raise NotEvaluableError(
            f"run {run.run!r} has no tokenizer registered, so its models cannot be evaluated: register it "
            "again with one (wsm runs add ... --tokenizer PATH --overwrite) or ask without evaluation "
            "(evaluate=false, --no-eval)"
        )
