"""End-to-end integrity of merges: corrupt bytes and NaN/Inf are refused, naming where, and never published.

Checkpoints are published through the store with small checksum blocks, so every file spans many
blocks and the engine's slices cross block edges. Corruption is made behind the store's back
without changing any size (what bit rot or a bad copy does): only the checksums can tell.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from merger_helpers import random_state, save
from safetensors.torch import load
from safetensors.torch import save as st_save

from merger import execute_merge, plan_merge
from merger.engine import run_shards
from merger.errors import CorruptInputError, NonFiniteError
from merger.plan import MergePlan
from merger.store_io import plan_selection, publish_merge, publish_parts, select
from theory import CurveSpec
from wsm.store import CheckpointManifest, Store, layout

B = 10**9
BLOCK = 4096
"""Checksum block of the test stores: a 100 KB checkpoint spans ~25 blocks."""


def _publish_run(store: Store, states: list[dict[str, torch.Tensor]]) -> list[CheckpointManifest]:
    store.checksum_block_size = BLOCK
    out = []
    for i, s in enumerate(states):
        with store.publish_checkpoint("r1", (i + 1) * 10 * B, step=i + 1) as pub:
            pub.write_bytes(layout.MODEL_FILE, st_save(s))
        assert pub.manifest is not None
        out.append(pub.manifest)
    return out


def _tensor_offset(store: Store, manifest: CheckpointManifest, name: str) -> int:
    """Absolute file offset of tensor ``name``'s first data byte."""
    raw = store.read_bytes(manifest.path(layout.MODEL_FILE))
    n = int.from_bytes(raw[:8], "little")
    return 8 + n + int(json.loads(raw[8 : 8 + n])[name]["data_offsets"][0])


def _overwrite(store: Store, manifest: CheckpointManifest, offset: int, data: bytes) -> None:
    """Replace bytes of the checkpoint's weights behind the store's back; the size stays the same."""
    path = store.full_path(manifest.path(layout.MODEL_FILE))
    raw = bytearray(store.fs.cat_file(path))
    raw[offset : offset + len(data)] = data
    store.fs.pipe_file(path, bytes(raw))


def _plan(store: Store, **kwargs: object) -> MergePlan:
    return plan_selection(store, select(store, "r1", CurveSpec("linear"), "20B"), chunk_bytes=8192, **kwargs)


def _nothing_published(store: Store) -> None:
    assert store.list_models("r1") == []
    models = store.full_path("runs/r1/models")
    assert not store.fs.exists(models) or store.fs.find(models) == []  # no staging dir or stray object


@pytest.mark.parametrize("where", ["data", "header"])
def test_flipped_byte_fails_the_merge_naming_file_and_range(store: Store, where: str) -> None:
    manifests = _publish_run(store, [random_state(i) for i in range(3)])
    bad = manifests[1]
    if where == "data":
        offset = _tensor_offset(store, bad, "embed.weight") + 5 * BLOCK + 17
        flipped = bytes([store.read_range(bad.path(layout.MODEL_FILE), offset, 1)[0] ^ 0x10])
    else:  # the header's space padding turned into a tab: still valid JSON, only the checksum can tell
        raw = store.read_bytes(bad.path(layout.MODEL_FILE))
        offset = 8 + int.from_bytes(raw[:8], "little") - 1
        assert raw[offset : offset + 1] == b" "
        flipped = b"\t"
    _overwrite(store, bad, offset, flipped)
    plan = _plan(store)  # sizes match: planning cannot see it
    with pytest.raises(CorruptInputError) as e:
        publish_merge(store, plan, name="m")
    start = offset - offset % BLOCK
    msg = str(e.value)
    assert bad.path(layout.MODEL_FILE) in msg and f"at bytes {start}-{start + BLOCK - 1}" in msg, msg
    assert "\n" not in msg
    _nothing_published(store)


def test_nan_written_behind_the_store_is_corruption(store: Store) -> None:
    manifests = _publish_run(store, [random_state(i) for i in range(3)])
    offset = _tensor_offset(store, manifests[2], "layer.0.weight")
    _overwrite(
        store,
        manifests[2],
        offset,
        torch.full((4,), float("nan")).to(torch.bfloat16).view(torch.uint8).numpy().tobytes(),
    )
    with pytest.raises(CorruptInputError, match="at bytes"):
        publish_merge(store, _plan(store), name="m")
    _nothing_published(store)


def test_published_nan_is_refused_unless_allowed(store: Store) -> None:
    states = [random_state(i) for i in range(3)]
    states[1]["layer.0.weight"][3, 5] = float("nan")
    states[2]["embed.weight"][7, 1] = float("inf")
    manifests = _publish_run(store, states)
    with pytest.raises(NonFiniteError) as e:
        publish_merge(store, _plan(store), name="m")
    msg = str(e.value)
    # Plan order is storage order: embed.weight (inf in checkpoint 3) comes first.
    assert "embed.weight" in msg and manifests[2].path(layout.MODEL_FILE) in msg and "inf" in msg, msg
    assert "allow_nonfinite" in msg and "\n" not in msg
    _nothing_published(store)

    plan = _plan(store, allow_nonfinite=True)
    manifest, _ = publish_merge(store, plan, name="m")
    assert manifest.config["merge"]["allow_nonfinite"] is True
    merged = load(store.read_file(manifest, layout.MODEL_FILE))
    assert torch.isnan(merged["layer.0.weight"][3, 5]) and torch.isinf(merged["embed.weight"][7, 1])


def test_clean_store_merge_is_verified_and_plain_files_are_not(local_store: Store, tmp_path: Path) -> None:
    states = [random_state(i) for i in range(2)]
    _publish_run(local_store, states)
    manifest, stats = publish_merge(local_store, _plan(local_store), name="m")
    assert stats.verified_inputs == [True, True]
    assert stats.verified_bytes >= stats.bytes_read
    assert [i["verified"] for i in manifest.config["merge"]["inputs"]] == [True, True]
    # Files outside the store have no manifest: merged, and honestly marked unverified.
    paths = [save(tmp_path / f"c{i}.safetensors", s) for i, s in enumerate(states)]
    execute_merge(plan_merge(paths, [0.5, 0.5]), tmp_path / "out")
    record = json.loads((tmp_path / "out" / "merge_manifest.json").read_text())
    assert [i["verified"] for i in record["inputs"]] == [False, False]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == local_store.read_file(
        manifest, layout.MODEL_FILE
    )


def test_schema_1_checkpoints_merge_unverified(local_store: Store) -> None:
    manifests = _publish_run(local_store, [random_state(i) for i in range(2)])
    for m in manifests:  # as written before checksums existed
        old = m.model_copy(
            update={"schema_version": 1, "files": [f.model_copy(update={"checksums": None}) for f in m.files]}
        )
        local_store.fs.pipe_file(
            local_store.full_path(f"{m.dir}/{layout.MANIFEST}"), old.model_dump_json().encode()
        )
    manifest, stats = publish_merge(local_store, _plan(local_store), name="m")
    assert stats.verified_inputs == [False, False]
    assert [i["verified"] for i in manifest.config["merge"]["inputs"]] == [False, False]


def test_split_parts_verify_their_blocks_and_corruption_in_one_part_stops_it(
    local_store: Store, tmp_path: Path
) -> None:
    _publish_run(local_store, [random_state(i) for i in range(3)])
    parts = _plan(local_store).split(3)
    plan = parts[0].plan
    for d in ("scratch", "again"):
        (tmp_path / d).mkdir()
    stats = [run_shards(plan, p.shard_indices, str(tmp_path / "scratch")) for p in parts]
    assert all(s.verified_inputs == [True] * len(plan.inputs) for s in stats)
    # Corrupt a byte only the last part reads: that part fails; the first, far away, does not notice.
    bad = local_store.get_checkpoint("r1", plan.inputs[0].extra["tokens"])
    biggest = max(parts[-1].tensors, key=lambda t: t.in_nbytes)
    offset = _tensor_offset(local_store, bad, biggest.name) + biggest.in_nbytes // 2
    _overwrite(local_store, bad, offset, b"\xff\xff")
    run_shards(plan, parts[0].shard_indices, str(tmp_path / "again"))
    with pytest.raises(CorruptInputError, match=bad.path(layout.MODEL_FILE)):
        run_shards(plan, parts[-1].shard_indices, str(tmp_path / "again"))


def test_split_publish_refuses_a_shard_changed_on_scratch(local_store: Store, tmp_path: Path) -> None:
    _publish_run(local_store, [random_state(i) for i in range(2)])
    parts = _plan(local_store).split(2)
    plan = parts[0].plan
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    stats = [run_shards(plan, p.shard_indices, str(scratch)) for p in parts]
    shard = scratch / plan.shards[0].filename
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="scratch copy is corrupt"):
        publish_parts(local_store, plan, str(scratch), stats, name="m")
    _nothing_published(local_store)


def test_float16_output_overflow_is_named(tmp_path: Path) -> None:
    big = {"w": torch.full((64,), 1e5), "ok": torch.ones(8)}
    paths = [save(tmp_path / f"c{i}.safetensors", big) for i in range(2)]
    with pytest.raises(NonFiniteError, match="merged tensor 'w' overflows F16"):
        execute_merge(plan_merge(paths, [0.5, 0.5], out_dtype="float16"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_plan_round_trip_keeps_entries_and_the_flag(local_store: Store) -> None:
    _publish_run(local_store, [random_state(i) for i in range(2)])
    plan = _plan(local_store, allow_nonfinite=True)
    back = MergePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back.allow_nonfinite and back.inputs[0].files[0].entry == plan.inputs[0].files[0].entry
    old = plan.to_dict()
    old["format_version"] = 2
    del old["allow_nonfinite"]
    for ck in old["inputs"]:
        ck["files"] = [f[:3] for f in ck["files"]]
    legacy = MergePlan.from_dict(old)
    assert not legacy.allow_nonfinite and legacy.inputs[0].files[0].entry is None


def test_cli_refuses_nonfinite_in_one_line_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsm.cli import main

    states = [random_state(i) for i in range(2)]
    states[1]["layer.0.norm"][2] = float("-inf")
    a, b = (save(tmp_path / f"c{i}.safetensors", s) for i, s in enumerate(states))
    out = tmp_path / "out"
    assert main(["merge", a, b, "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "layer.0.norm" in err and b in err and "--allow-nonfinite" in err, err
    assert not out.exists()
    assert main(["merge", a, b, "-o", str(out), "--no-progress", "--allow-nonfinite"]) == 0
    assert json.loads((out / "merge_manifest.json").read_text())["allow_nonfinite"] is True
