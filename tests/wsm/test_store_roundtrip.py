"""Publish → list → read round trips on every backend, and the publish lifecycle rules."""

from __future__ import annotations

import json
import os

import pytest

from wsm.store import (
    SCHEMA_VERSION,
    ArtifactExistsError,
    ArtifactNotFoundError,
    CheckpointManifest,
    SourceCheckpoint,
    Store,
    StoreError,
    Window,
    checkpoint_name,
    layout,
)

B = 10**9


def publish_ckpt(store: Store, run: str, tokens: int, payload: bytes = b"weights") -> CheckpointManifest:
    with store.publish_checkpoint(run, tokens, step=tokens // 1000, extra={"lr": 3e-4}) as pub:
        pub.write_bytes(layout.MODEL_FILE, payload)
        with pub.open(layout.TRAIN_STATE_FILE) as f:
            f.write(b"state-")
            f.write(payload[::-1])
    assert pub.manifest is not None
    return pub.manifest


def test_run_round_trip(store: Store) -> None:
    store.create_run("r1", model={"d_model": 64}, schedule={"lr": 1e-3}, description="tiny")
    store.create_run("r2")
    assert [r.run for r in store.list_runs()] == ["r1", "r2"]
    run = store.get_run("r1")
    assert run.model == {"d_model": 64} and run.schedule == {"lr": 1e-3} and run.files == []
    with pytest.raises(ArtifactExistsError):
        store.create_run("r1")
    store.create_run("r1", description="v2", overwrite=True)
    assert store.get_run("r1").description == "v2"
    with pytest.raises(ArtifactNotFoundError):
        store.get_run("nope")


def test_checkpoint_round_trip_sorted_and_latest(store: Store) -> None:
    assert store.list_checkpoints("r1") == [] and store.latest_checkpoint("r1") is None
    for t in (80 * B, 20 * B, 100 * B, 5 * B):
        publish_ckpt(store, "r1", t, payload=str(t).encode())
    ckpts = store.list_checkpoints("r1")
    assert [c.tokens for c in ckpts] == [5 * B, 20 * B, 80 * B, 100 * B]
    latest = store.latest_checkpoint("r1")
    assert latest is not None and latest.tokens == 100 * B
    assert latest.dir == f"runs/r1/checkpoints/{checkpoint_name(100 * B)}"
    assert store.read_file(latest, layout.MODEL_FILE) == str(100 * B).encode()
    assert store.read_file(latest, layout.TRAIN_STATE_FILE) == b"state-" + str(100 * B).encode()[::-1]
    got = store.get_checkpoint("r1", 20 * B)
    assert got == ckpts[1] and got.step == 20 * B // 1000 and got.extra == {"lr": 3e-4}
    assert {f.name for f in got.files} == {layout.MODEL_FILE, layout.TRAIN_STATE_FILE}
    assert got.code_version and got.schema_version == SCHEMA_VERSION and got.created_at.tzinfo is not None
    assert all(f.checksums is not None for f in got.files)
    with pytest.raises(ArtifactNotFoundError):
        store.get_checkpoint("r1", 1)
    store.delete_checkpoint("r1", 20 * B)
    assert [c.tokens for c in store.list_checkpoints("r1")] == [5 * B, 80 * B, 100 * B]
    assert not store.exists(f"{got.dir}/{layout.MODEL_FILE}")
    with pytest.raises(ArtifactNotFoundError):
        store.delete_checkpoint("r1", 20 * B)


def test_models_anneal_and_baseline_sharded(store: Store) -> None:
    sources = [SourceCheckpoint(tokens=t, sha256="0" * 64, c=0.5, w=0.25) for t in (60 * B, 80 * B)]
    with store.publish_model(
        "r1", "anneal-80B", kind="anneal", tokens=80 * B, dtype="bfloat16", curve={"name": "1-sqrt"}
    ) as pub:
        pub.write_bytes("model-00001-of-00002.safetensors", b"a" * 10)
        pub.write_bytes("model-00002-of-00002.safetensors", b"b" * 20)
        pub.write_bytes(layout.MODEL_INDEX_FILE, json.dumps({"weight_map": {}}).encode())
        pub.update(sources=sources, window=Window(start_tokens=60 * B, end_tokens=80 * B))
        pub.update(timings={"read": 1.5, "write": 0.5}, bytes_read=30)
    with store.publish_model("r1", "baseline-80B", kind="baseline", tokens=80 * B, dtype="float32") as pub:
        pub.write_bytes(layout.MODEL_FILE, b"x")
        pub.update(branch_tokens=60 * B, config={"decay": "linear"})
    anneal = store.get_model("r1", "anneal-80B")
    assert anneal.is_sharded and anneal.weight_files == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert anneal.sources == sources and anneal.window is not None and anneal.bytes_read == 30
    assert anneal.total_bytes == 30 + len(json.dumps({"weight_map": {}}))
    assert [m.name for m in store.list_models("r1")] == ["anneal-80B", "baseline-80B"]
    assert [m.name for m in store.list_models("r1", kind="baseline")] == ["baseline-80B"]
    assert not store.get_model("r1", "baseline-80B").is_sharded
    store.delete_model("r1", "baseline-80B")
    assert [m.name for m in store.list_models("r1")] == ["anneal-80B"]
    with pytest.raises(ValueError):
        store.publish_model("r1", "m", kind="other", tokens=1, dtype="f32")  # type: ignore[arg-type]


def test_evals_and_filter(store: Store) -> None:
    with store.publish_eval("r1", "e1", model_id="runs/r1/models/m1", seeds=[1, 2]) as pub:
        pub.update(metrics={"loss": 2.5}, duration_s=3.0, config={"tasks": ["ppl"]})
    with store.publish_eval("r1", "e2", model_id="runs/r1/models/m2") as pub:
        pub.write_bytes("samples.jsonl", b"{}\n")
    assert [e.name for e in store.list_evals("r1")] == ["e1", "e2"]
    (e1,) = store.list_evals("r1", model_id="runs/r1/models/m1")
    assert e1.metrics == {"loss": 2.5} and e1.seeds == [1, 2] and e1.duration_s == 3.0
    with pytest.raises(ValueError):
        store.publish_eval("r1", "e3", model_id="../../etc")


def test_metrics_segments_concatenate(store: Store) -> None:
    assert store.read_metrics("r1") == []
    p0 = store.append_metrics("r1", [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.9}])
    p1 = store.append_metrics("r1", [{"step": 3, "loss": 2.8, "lr": 1e-3}])
    assert p0.endswith("0000000000.jsonl") and p1.endswith("0000000001.jsonl")
    assert [r["step"] for r in store.read_metrics("r1")] == [1, 2, 3]


def test_newest_metrics_read_only_the_newest_segments(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from wsm.store import store as store_module

    monkeypatch.setattr(store_module, "METRICS_READ_BATCH", 2)
    for seg in range(10):
        store.append_metrics("r1", [{"step": 2 * seg}, {"step": 2 * seg + 1}])
    read: list[str] = []
    real_cat = store.fs.cat
    monkeypatch.setattr(store.fs, "cat", lambda paths, **kw: read.extend(paths) or real_cat(paths, **kw))
    assert [r["step"] for r in store.read_metrics("r1", limit=3)] == [17, 18, 19]
    assert len(read) == 2, "two segments hold the newest three records"
    assert [r["step"] for r in store.read_metrics("r1", limit=7)] == list(range(13, 20))
    assert store.read_metrics("r1", limit=0) == []
    assert [r["step"] for r in store.read_metrics("r1", limit=1000)] == list(range(20))


def test_duplicate_publish_is_an_error_unless_overwrite(store: Store) -> None:
    publish_ckpt(store, "r1", 7, b"one")
    with pytest.raises(ArtifactExistsError), store.publish_checkpoint("r1", 7):
        pass
    with store.publish_checkpoint("r1", 7, overwrite=True) as pub:
        pub.write_bytes(layout.MODEL_FILE, b"two")
    ckpt = store.get_checkpoint("r1", 7)
    assert store.read_file(ckpt, layout.MODEL_FILE) == b"two"
    assert [f.name for f in ckpt.files] == [layout.MODEL_FILE]  # old train_state.pt is gone
    assert not store.exists(f"{ckpt.dir}/{layout.TRAIN_STATE_FILE}")


def test_exception_aborts_and_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.publish_checkpoint("r1", 9) as pub:
        pub.write_bytes(layout.MODEL_FILE, b"w" * 100)
        with pub.open(layout.TRAIN_STATE_FILE) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert store.list_checkpoints("r1") == []
    assert not store.exists(f"{layout.checkpoint_dir('r1', 9)}/{layout.MODEL_FILE}")
    assert store.cleanup_stale(older_than=0) == []  # nothing left to clean either
    publish_ckpt(store, "r1", 9)  # and the name is free again


def test_publisher_misuse_is_refused(store: Store) -> None:
    with pytest.raises(TypeError, match="no_such_field"), store.publish_checkpoint("r1", 1) as pub:
        pub.update(no_such_field=1)
    with pytest.raises(StoreError), store.publish_checkpoint("r1", 1) as pub:
        pub.write_bytes(layout.MANIFEST, b"{}")
    with pytest.raises(StoreError), store.publish_checkpoint("r1", 1) as pub:
        pub.write_bytes("a.bin", b"1")
        pub.write_bytes("a.bin", b"2")
    with pytest.raises(StoreError), store.publish_checkpoint("r1", 1) as pub:
        pub.open("a.bin").write(b"never closed")
    assert store.list_checkpoints("r1") == []


def test_ranged_reads_open_and_put_file(store: Store, tmp_path: os.PathLike[str]) -> None:
    big = os.urandom(store.block_size + 123_457)  # > one part: a real multipart upload on S3
    src = os.path.join(tmp_path, "big.bin")
    with open(src, "wb") as f:
        f.write(big)
    with store.publish_checkpoint("r1", 3) as pub:
        entry = pub.put_file(layout.MODEL_FILE, src)
    assert entry.size == len(big)
    ckpt = store.get_checkpoint("r1", 3)
    path = ckpt.path(layout.MODEL_FILE)
    assert store.size(path) == len(big)
    assert store.read_range(path, 0, 8) == big[:8]
    assert store.read_range(path, len(big) - 100, 100) == big[-100:]
    assert store.read_range(path, 5_000_000, 10) == big[5_000_000:5_000_010]
    with store.open(path) as f:
        f.seek(1_000_000)
        assert f.read(16) == big[1_000_000:1_000_016]
    store.verify(ckpt)
    local = store.local_path(path)
    if store.is_local:
        assert local is not None
        with open(local, "rb") as f:
            assert f.read(4) == big[:4]
    else:
        assert local is None
    store.put_file(src, "runs/r1/extra.bin")
    assert store.read_bytes("runs/r1/extra.bin") == big
    store.write_bytes("runs/r1/small.txt", b"hi")
    assert store.read_bytes("runs/r1/small.txt") == b"hi"
    dst = os.path.join(tmp_path, "copy.bin")
    store.download(ckpt, layout.MODEL_FILE, dst)
    with open(dst, "rb") as f:
        assert f.read() == big
