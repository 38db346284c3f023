"""Corrupt, truncated and misplaced data is reported by name, never used silently."""

from __future__ import annotations

import os
import time

import pytest

from wsm.store import (
    SCHEMA_VERSION,
    ArtifactNotFoundError,
    CheckpointManifest,
    IntegrityError,
    ManifestError,
    Store,
    layout,
)


def publish(store: Store, tokens: int, data: bytes) -> CheckpointManifest:
    with store.publish_checkpoint("r1", tokens) as pub:
        pub.write_bytes(layout.MODEL_FILE, data)
        pub.write_bytes(layout.TRAIN_STATE_FILE, b"state")
    assert pub.manifest is not None
    return pub.manifest


def clobber(store: Store, path: str, data: bytes) -> None:
    """Change a stored file behind the store's back (what disk rot or a bad copy would do)."""
    store.fs.pipe_file(store.full_path(path), data)


def test_corrupt_file_detected(store: Store, tmp_path: os.PathLike[str]) -> None:
    ckpt = publish(store, 1, b"A" * 1000)
    path = ckpt.path(layout.MODEL_FILE)
    clobber(store, path, b"A" * 999 + b"B")  # same size: only the hash can tell
    with pytest.raises(IntegrityError) as e:
        store.read_file(ckpt, layout.MODEL_FILE)
    assert e.value.path == path and "xxh3" in e.value.expected and e.value.byte_range == (0, 1000)
    store.verify(ckpt, full=False)  # sizes still match
    with pytest.raises(IntegrityError, match=layout.MODEL_FILE):
        store.verify(ckpt)
    store.verify(ckpt, names=[layout.TRAIN_STATE_FILE])
    out_dir = os.path.join(tmp_path, "downloads")
    os.makedirs(out_dir)
    with pytest.raises(IntegrityError):
        store.download(ckpt, layout.MODEL_FILE, os.path.join(out_dir, "out.bin"))
    assert os.listdir(out_dir) == []  # neither the target nor its temporary
    assert store.read_file(ckpt, layout.MODEL_FILE, verify=False)[-1:] == b"B"


def test_truncated_file_detected(store: Store) -> None:
    ckpt = publish(store, 2, b"x" * 4096)
    path = ckpt.path(layout.MODEL_FILE)
    clobber(store, path, b"x" * 100)
    with pytest.raises(IntegrityError) as e:
        store.verify(ckpt, full=False)
    assert e.value.path == path and e.value.expected == "4096 bytes" and e.value.actual == "100 bytes"
    with pytest.raises(IntegrityError, match="4096 bytes"):
        store.read_file(ckpt, layout.MODEL_FILE)
    with pytest.raises(IntegrityError):
        store.read_range(path, 50, 100)  # runs past the truncated end


def test_missing_file_detected(store: Store) -> None:
    ckpt = publish(store, 3, b"data")
    store.fs.rm_file(store.full_path(ckpt.path(layout.TRAIN_STATE_FILE)))
    with pytest.raises(IntegrityError, match="missing"):
        store.verify(ckpt, full=False)
    with pytest.raises(ArtifactNotFoundError):
        store.read_file(ckpt, layout.TRAIN_STATE_FILE)
    with pytest.raises(KeyError):
        ckpt.path("not-listed.bin")


def test_invalid_or_misplaced_manifests_are_skipped(store: Store) -> None:
    good = publish(store, 10, b"ok")
    bad = publish(store, 20, b"bad")
    moved = publish(store, 30, b"moved")
    newer = publish(store, 40, b"newer")
    clobber(store, f"{bad.dir}/{layout.MANIFEST}", b'{"kind": "checkpoint", "run": "r1", "tok')
    # A manifest copied into another checkpoint's directory does not describe that directory.
    clobber(store, f"{moved.dir}/{layout.MANIFEST}", good.model_dump_json().encode())
    future = newer.model_copy(update={"schema_version": SCHEMA_VERSION + 1}).model_dump_json()
    clobber(store, f"{newer.dir}/{layout.MANIFEST}", future.encode())
    assert [c.tokens for c in store.list_checkpoints("r1")] == [10]
    for tokens, reason in ((20, "Invalid JSON|validation"), (30, "describes"), (40, "newer")):
        with pytest.raises(ManifestError, match=reason):
            store.get_checkpoint("r1", tokens)


def test_stray_entries_ignored_then_cleaned(store: Store) -> None:
    publish(store, 5, b"real")
    fs, root = store.fs, store.root
    # A killed local writer's staging dir, and an object-store publish that died before its manifest.
    fs.pipe_file(f"{root}/runs/r1/checkpoints/.tmp-000000000000000007-abc/manifest.json", b"{}")
    fs.pipe_file(f"{root}/runs/r1/checkpoints/.tmp-000000000000000007-abc/model.safetensors", b"half")
    fs.pipe_file(f"{root}/{layout.checkpoint_dir('r1', 8)}/model.safetensors", b"half")
    fs.pipe_file(f"{root}/runs/r1/models/.trash-m-1/manifest.json", b"{}")
    fs.pipe_file(f"{root}/runs/r1/metrics/.tmp-0000000000.jsonl-x", b'{"a": 1}\n')
    assert [c.tokens for c in store.list_checkpoints("r1")] == [5]
    assert store.list_models("r1") == [] and store.read_metrics("r1") == []
    assert store.cleanup_stale(older_than=3600) == []  # too young: may be a live writer
    time.sleep(0.05)
    removed = store.cleanup_stale(older_than=0.01)
    assert removed == sorted(
        [
            "runs/r1/checkpoints/.tmp-000000000000000007-abc",
            layout.checkpoint_dir("r1", 8),
            "runs/r1/metrics/.tmp-0000000000.jsonl-x",
            "runs/r1/models/.trash-m-1",
        ]
    )
    assert not fs.exists(f"{root}/{layout.checkpoint_dir('r1', 8)}/model.safetensors")
    assert [c.tokens for c in store.list_checkpoints("r1")] == [5]
    store.verify(store.get_checkpoint("r1", 5))
