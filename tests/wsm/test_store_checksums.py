"""Fast checksums: written with every published file, verified per block in any read order, naming the range."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
import xxhash

from wsm.store import (
    SCHEMA_VERSION,
    CheckpointManifest,
    FileEntry,
    IntegrityError,
    ManifestError,
    Store,
    layout,
)
from wsm.store.checksums import BlockVerifier, ChecksumWriter

BLOCK = 1024


def _entry(data: bytes, block: int = BLOCK) -> FileEntry:
    writer = ChecksumWriter(block)
    for i in range(0, len(data), 333):  # writes that do not line up with blocks
        writer.update(data[i : i + 333])
    return FileEntry(name="f.bin", size=len(data), sha256="0" * 64, checksums=writer.result())


def test_checksums_are_xxh3_of_the_file_and_of_each_block() -> None:
    data = os.urandom(5 * BLOCK + 17)
    cs = _entry(data).checksums
    assert cs is not None and cs.count == 6 and cs.xxh3 == xxhash.xxh3_64_hexdigest(data)
    assert [cs.block(i) for i in range(6)] == [
        xxhash.xxh3_64_hexdigest(data[i : i + BLOCK]) for i in range(0, len(data), BLOCK)
    ]
    empty = _entry(b"").checksums
    assert empty is not None and empty.count == 0
    with pytest.raises(ValueError, match="block checksums"):
        FileEntry(name="f.bin", size=len(data) + BLOCK, sha256="0" * 64, checksums=cs)


def _pieces(size: int, rng: random.Random) -> list[tuple[int, int]]:
    cuts = sorted({0, size, *(rng.randrange(size) for _ in range(40))})
    return list(itertools.pairwise(cuts))


@pytest.mark.parametrize("hold", [None, 3 * BLOCK, 0])
def test_pieces_in_any_order_verify_every_block(hold: int | None) -> None:
    rng = random.Random(1)
    data = os.urandom(9 * BLOCK + 5)
    verifier = BlockVerifier("f.bin", _entry(data), hold_bytes=hold)
    pieces = _pieces(len(data), rng)
    rng.shuffle(pieces)
    for a, b in pieces:
        verifier.feed(a, memoryview(data)[a:b])
    reads: list[tuple[int, int]] = []

    def read(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return data[offset : offset + length]

    verifier.finish(read)
    assert verifier.verified == set(range(10))
    if hold is None:
        assert reads == []  # everything lined up from what was fed: nothing read twice


def test_a_bad_block_is_named_whatever_the_order() -> None:
    data = bytearray(os.urandom(6 * BLOCK))
    entry = _entry(bytes(data))
    data[3 * BLOCK + 10] ^= 0x01
    pieces = _pieces(len(data), random.Random(2))
    random.Random(3).shuffle(pieces)
    verifier = BlockVerifier("runs/r/x.bin", entry)
    with pytest.raises(IntegrityError) as e:
        for a, b in pieces:
            verifier.feed(a, bytes(data[a:b]))
    assert e.value.byte_range == (3 * BLOCK, 4 * BLOCK)
    assert f"runs/r/x.bin at bytes {3 * BLOCK}-{4 * BLOCK - 1}" in str(e.value)


def _publish(store: Store, data: bytes) -> CheckpointManifest:
    store.checksum_block_size = BLOCK
    with store.publish_checkpoint("r1", 1) as pub:
        with pub.open(layout.MODEL_FILE) as f:
            for i in range(0, len(data), 700):
                f.write(data[i : i + 700])
        pub.write_bytes(layout.TRAIN_STATE_FILE, b"state")
    assert pub.manifest is not None
    return pub.manifest


def _flip(store: Store, path: str, offset: int) -> None:
    raw = bytearray(store.fs.cat_file(store.full_path(path)))
    raw[offset] ^= 0x40
    store.fs.pipe_file(store.full_path(path), bytes(raw))


def test_published_files_carry_checksums_and_flips_are_located(store: Store, tmp_path: Path) -> None:
    data = os.urandom(7 * BLOCK + 3)
    ckpt = _publish(store, data)
    again = store.get_checkpoint("r1", 1)
    assert again.schema_version == SCHEMA_VERSION == 2
    entry = again.file(layout.MODEL_FILE)
    assert entry.checksums is not None and entry.checksums.block_size == BLOCK
    assert entry.checksums.xxh3 == xxhash.xxh3_64_hexdigest(data)
    store.verify_files(again)
    path = ckpt.path(layout.MODEL_FILE)
    _flip(store, path, 5 * BLOCK + 99)  # same size: only the checksums can tell
    with pytest.raises(IntegrityError) as e:
        store.verify_files(again, [layout.MODEL_FILE])
    assert e.value.path == path and e.value.byte_range == (5 * BLOCK, 6 * BLOCK)
    store.verify_files(again, [layout.TRAIN_STATE_FILE])
    out = tmp_path / "copy"
    out.mkdir()
    with pytest.raises(IntegrityError, match=f"at bytes {5 * BLOCK}-{6 * BLOCK - 1}"):
        store.verified_local_path(again, layout.MODEL_FILE, out)
    assert list(out.iterdir()) == []  # neither a copy nor its temporary


def test_verified_local_path_of_a_good_file(store: Store, tmp_path: Path) -> None:
    data = os.urandom(3 * BLOCK)
    ckpt = _publish(store, data)
    local = store.verified_local_path(ckpt, layout.MODEL_FILE, tmp_path)
    assert Path(local).read_bytes() == data
    assert (local == store.local_path(ckpt.path(layout.MODEL_FILE))) == store.is_local


def test_schema_1_manifests_still_load_and_verify_by_sha256(store: Store) -> None:
    ckpt = _publish(store, os.urandom(2 * BLOCK))
    old = ckpt.model_copy(
        update={"schema_version": 1, "files": [f.model_copy(update={"checksums": None}) for f in ckpt.files]}
    )
    store.fs.pipe_file(store.full_path(f"{ckpt.dir}/{layout.MANIFEST}"), old.model_dump_json().encode())
    loaded = store.get_checkpoint("r1", 1)
    assert loaded.schema_version == 1 and loaded.file(layout.MODEL_FILE).checksums is None
    store.verify_files(loaded)
    _flip(store, ckpt.path(layout.MODEL_FILE), 10)
    with pytest.raises(IntegrityError, match="sha256"):
        store.verify_files(loaded)


def test_checksums_that_do_not_cover_the_file_are_a_bad_manifest(store: Store) -> None:
    ckpt = _publish(store, os.urandom(2 * BLOCK))
    text = ckpt.model_dump_json().replace(f'"size":{2 * BLOCK}', f'"size":{3 * BLOCK}', 1)
    assert text != ckpt.model_dump_json()
    store.fs.pipe_file(store.full_path(f"{ckpt.dir}/{layout.MANIFEST}"), text.encode())
    with pytest.raises(ManifestError, match="block checksums"):
        store.get_checkpoint("r1", 1)
