"""A store that cannot be written: POST /anneal answers 503 with the reason (no server path) and
records nothing; /healthz shows the store as not writable. On the ``quota://`` stand-in, and on a
real tmpfs (full, then read-only) where this process may mount one.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from anneal import jobs
from api.app import create_app
from tests.api.conftest import FakeEnqueuer
from tests.api.fixtures import make_run
from tests.conftest import make_settings
from tests.faultfs import QuotaFileSystem, can_mount, quota_url, tmpfs
from wsm.settings import Settings
from wsm.store import Store

BODY = {"curve": "1-sqrt", "window": "40M", "evaluate": False}
ABSOLUTE = re.compile(r"(?<![\w:])/(?:[\w.-]+/)+[\w.-]+")


def _client(settings: Settings, store: Store) -> TestClient:
    return TestClient(create_app(settings, store=store, enqueuer=FakeEnqueuer()))


def _refused(client: TestClient, reason: str, root: str | None = None) -> None:
    r = client.post("/anneal", json=BODY)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "store_unwritable" and body["detail"].startswith(reason), body
    assert not ABSOLUTE.search(r.text) and (root is None or root not in r.text), r.text
    health = client.get("/healthz")
    assert health.status_code == 503
    store = health.json()["store"]
    assert store["ok"] is False and store["writable"] is False and reason in store["detail"], store
    assert not ABSOLUTE.search(health.text), health.text


def _accepted(client: TestClient, store: Store) -> None:
    assert client.get("/healthz").json()["store"]["writable"] is True
    r = client.post("/anneal", json=BODY)
    assert r.status_code == 202, r.text
    assert jobs.find(store, "r1", r.json()["job_id"]) is not None


@pytest.fixture()
def quota_store(tmp_path: Path) -> Iterator[tuple[Settings, Store]]:
    QuotaFileSystem.reset()
    settings = make_settings(
        store_url=quota_url(), state_dir=str(tmp_path / "state"), api_token=None, api_store_probe_s=0
    )
    store = Store(settings.store_url, settings=settings)
    make_run(store)
    yield settings, store
    QuotaFileSystem.reset()


def test_read_only_store_gets_503_and_records_nothing(quota_store: tuple[Settings, Store]) -> None:
    settings, store = quota_store
    client = _client(settings, store)
    QuotaFileSystem.read_only = True
    _refused(client, "the store is read-only")
    assert jobs.list_jobs(store, "r1") == [] and store.list_pins("r1") == []
    QuotaFileSystem.read_only = False
    _accepted(client, store)


def test_full_store_gets_503_with_the_reason(quota_store: tuple[Settings, Store]) -> None:
    settings, store = quota_store
    client = _client(settings, store)
    fs: Any = store.fs
    QuotaFileSystem.quota_bytes = fs.used() + 512  # not even a pin and a record fit
    _refused(client, "the store is full (no space left on device)")
    assert jobs.list_jobs(store, "r1") == []
    QuotaFileSystem.quota_bytes = None
    _accepted(client, store)


def test_known_unwritable_store_refuses_without_writing(
    quota_store: tuple[Settings, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the last look said "not writable" (and is fresh), POST /anneal answers 503 at once."""
    settings, store = quota_store
    client = _client(settings.model_copy(update={"api_store_probe_s": 3600.0}), store)
    QuotaFileSystem.read_only = True
    assert client.get("/healthz").json()["store"]["writable"] is False
    QuotaFileSystem.read_only = False  # the cached answer still says no
    r = client.post("/anneal", json=BODY)
    assert r.status_code == 503 and r.json()["error"] == "store_unwritable"
    assert jobs.list_jobs(store, "r1") == []


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root or CAP_SYS_ADMIN")
def test_real_full_then_read_only_file_system(tmp_path: Path) -> None:
    """The kernel's own ENOSPC and EROFS on a local store: 503 with the reason, never the mount path."""
    with tmpfs(tmp_path / "mnt", 2 * 1024 * 1024) as mount:
        root = mount.path / "store"
        settings = make_settings(
            store_url=str(root),
            state_dir=str(tmp_path / "state"),
            api_token=None,
            api_store_probe_s=0,
            store_reserve_bytes=64 * 1024,
        )
        store = Store(settings.store_url, settings=settings)
        make_run(store)
        client = _client(settings, store)
        filler = mount.path / "filler"
        with open(filler, "wb") as f:  # fill the file system to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        try:
            _refused(client, "the store is full (no space left on device)", str(mount.path))
        finally:
            filler.unlink()
        assert jobs.list_jobs(store, "r1") == []
        _accepted(client, store)
        # Less free than the reserve kept for job records: refused before the disk is full.
        reserve = settings.model_copy(update={"store_reserve_bytes": 4 * 1024 * 1024})
        strict = _client(reserve, Store(reserve.store_url, settings=reserve))
        r = strict.post("/anneal", json={**BODY, "curve": "cosine"})
        assert r.status_code == 503 and "kept for job records" in r.json()["detail"], r.text
        mount.read_only()
        try:
            client.app.state.publisher.flush(5)  # type: ignore[attr-defined]
            r = client.post("/anneal", json={**BODY, "curve": "linear"})
            assert r.status_code == 503 and r.json()["detail"].startswith("the store is read-only"), r.text
            assert str(mount.path) not in r.text
        finally:
            mount.read_only(False)
        shutil.rmtree(root, ignore_errors=True)
