"""Backend selection from one URL, batched listings, the run snapshot, and manifest schema rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wsm.settings import Settings
from wsm.store import SCHEMA_VERSION, CheckpointManifest, Store, layout, open_store


def _ckpt(store: Store, tokens: int) -> None:
    with store.publish_checkpoint("r1", tokens) as pub:
        pub.write_bytes(layout.MODEL_FILE, b"w")


@pytest.mark.parametrize("form", ["plain", "file-url", "relative"])
def test_local_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    monkeypatch.chdir(tmp_path)
    url = {"plain": str(tmp_path / "s"), "file-url": f"file://{tmp_path}/s", "relative": "./s"}[form]
    store = Store(url, settings=Settings(_env_file=None))  # type: ignore[call-arg]
    assert store.is_local and store.root == str(tmp_path / "s")
    _ckpt(store, 1)
    assert (tmp_path / "s" / layout.checkpoint_dir("r1", 1) / layout.MANIFEST).is_file()


def test_open_store_reads_settings_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSM_STORE_URL", str(tmp_path / "env-store"))
    store = open_store(settings=Settings(_env_file=None))  # type: ignore[call-arg]
    assert store.root == str(tmp_path / "env-store")
    assert open_store("memory://explicit").is_local is False


@pytest.mark.s3
def test_s3_with_explicit_storage_options(s3_settings: Settings) -> None:
    """Endpoint and keys as constructor arguments, nothing from settings."""
    bare = Settings(_env_file=None)  # type: ignore[call-arg]
    store = Store(
        s3_settings.store_url,
        settings=bare,
        endpoint_url=s3_settings.s3_endpoint_url,
        key=s3_settings.s3_access_key_id,
        secret=s3_settings.s3_secret_access_key,
        region="us-east-1",
    )
    _ckpt(store, 5)
    assert [c.tokens for c in Store(s3_settings.store_url, settings=s3_settings).list_checkpoints("r1")] == [
        5
    ]
    assert store.local_path(layout.checkpoint_dir("r1", 5) + "/" + layout.MODEL_FILE) is None


def test_listing_is_one_listing_and_one_batched_read(
    local_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for t in range(10):
        _ckpt(local_store, t)
    calls: dict[str, int] = {}
    depth = [0]  # count only the store's own calls, not fsspec's internal ones
    fs: Any = local_store.fs
    for name in ("find", "ls", "cat", "cat_file", "open", "info", "exists"):
        original = getattr(fs, name)

        def counted(*a: Any, _name: str = name, _orig: Any = original, **k: Any) -> Any:
            if depth[0] == 0:
                calls[_name] = calls.get(_name, 0) + 1
            depth[0] += 1
            try:
                return _orig(*a, **k)
            finally:
                depth[0] -= 1

        monkeypatch.setattr(fs, name, counted)
    assert len(local_store.list_checkpoints("r1")) == 10
    assert calls == {"find": 1, "cat": 1}


def test_read_run_snapshot(store: Store) -> None:
    store.create_run("r1", model={"n_layers": 2})
    for t in (2, 1):
        _ckpt(store, t)
    with store.publish_model("r1", "m", kind="anneal", tokens=2, dtype="bf16") as pub:
        pub.write_bytes(layout.MODEL_FILE, b"m")
    with store.publish_eval("r1", "e", model_id="runs/r1/models/m"):
        pass
    store.pin("r1", "job", [1])
    store.append_metrics("r1", [{"loss": 1.0}])
    snap = store.read_run("r1")
    assert snap.run is not None and snap.run.model == {"n_layers": 2}
    assert [c.tokens for c in snap.checkpoints] == [1, 2]
    assert [m.name for m in snap.models] == ["m"] and [e.name for e in snap.evals] == ["e"]
    assert [p.job_id for p in snap.pins] == ["job"]
    assert store.read_run("absent").checkpoints == []


def test_manifest_json_round_trip_and_forward_compat() -> None:
    m = CheckpointManifest(run="r1", tokens=7, extra={"lr": 1.0})
    again = CheckpointManifest.model_validate_json(m.model_dump_json())
    assert again == m and again.schema_version == SCHEMA_VERSION
    newer = m.model_dump(mode="json") | {"added_in_a_later_version": 1}
    assert CheckpointManifest.model_validate(newer) == m
    with pytest.raises(ValueError, match="newer"):
        CheckpointManifest.model_validate(m.model_dump() | {"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ValueError):
        CheckpointManifest.model_validate(
            m.model_dump() | {"files": [{"name": "../x", "size": 1, "sha256": "0" * 64}]}
        )
