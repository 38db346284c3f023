"""The DCP reader against checkpoints that megatron-core and torch wrote: listing, bytes, S3, errors, runs."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from dcp_fixtures import GLOBAL_BATCH, MEGATRON_ITERATIONS, OLMO_STEPS, TINY, TITAN_STEPS
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from merger.errors import CorruptFileError, MergeError
from merger.formats.base import CheckpointLayout, TensorChunk, TensorEntry
from merger.formats.dcp import key_kind, open_dcp
from merger.formats.dcp_runs import discover, megatron_tokens
from merger.formats.dtypes import DTYPES, TORCH_TO_CODE, tensor_view
from merger.formats.sources import get_fs, open_source
from merger.formats.torch_record import TAIL_BYTES

CKPTS = [(tp, it) for tp in ("megatron_tp1", "megatron_tp2") for it, _, _ in MEGATRON_ITERATIONS]


def _ckpt(request: pytest.FixtureRequest, run: str, iteration: int) -> Path:
    root: Path = request.getfixturevalue(run)
    return root / f"iter_{iteration:07d}"


def _metadata(path: Path) -> Any:
    return FileSystemReader(str(path)).read_metadata()


def _dcp_load(path: Path, layout: CheckpointLayout) -> dict[str, torch.Tensor]:
    """What torch.distributed.checkpoint.load returns for every listed tensor (whole, resharded)."""
    state = {k: torch.empty(t.shape, dtype=DTYPES[t.dtype][0]) for k, t in layout.tensors.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_load(state, checkpoint_id=str(path), no_dist=True)
    return state


def _read_chunk(layout: CheckpointLayout, entry: TensorEntry, chunk: TensorChunk) -> torch.Tensor:
    source = open_source(layout.files[chunk.file].uri, layout.storage_options)
    try:
        data = bytearray(source.read(chunk.byte_offset, chunk.nbytes))
    finally:
        source.close()
    return tensor_view(memoryview(data), entry.dtype).reshape(chunk.sizes).clone()


def _shard(full: torch.Tensor, chunk: TensorChunk) -> torch.Tensor:
    for dim, (o, n) in enumerate(zip(chunk.offsets, chunk.sizes, strict=True)):
        full = full.narrow(dim, o, n)
    return full


def _assert_bytes_match(path: Path, layout: CheckpointLayout) -> int:
    expected = _dcp_load(path, layout)
    count = 0
    for name, entry in layout.tensors.items():
        for chunk in entry.chunks:
            got = _read_chunk(layout, entry, chunk)
            want = _shard(expected[name], chunk)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            # bit for bit (NaNs and signed zeros included): compare the bytes
            assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)), name
            count += 1
    return count


@pytest.mark.parametrize(("run", "iteration"), CKPTS)
def test_listing_matches_torch_metadata(request: pytest.FixtureRequest, run: str, iteration: int) -> None:
    path = _ckpt(request, run, iteration)
    layout = open_dcp(str(path))
    md = _metadata(path)
    listed = [*layout.tensors, *layout.items, *layout.skipped]
    assert sorted(listed) == sorted(md.state_dict_metadata)
    for name, entry in layout.tensors.items():
        meta = md.state_dict_metadata[name]
        assert entry.dtype == TORCH_TO_CODE[meta.properties.dtype]
        assert entry.shape == tuple(meta.size)
        assert sorted(entry.chunk_key()) == sorted((tuple(c.offsets), tuple(c.sizes)) for c in meta.chunks)
        assert all(c.nbytes == c.numel * entry.itemsize for c in entry.chunks)
    tp = 2 if run.endswith("2") else 1
    assert len(layout.tensors["embedding.word_embeddings.weight"].chunks) == tp
    assert layout.tensors["decoder.layers.mlp.linear_fc1.weight"].shape == (
        2,
        2 * TINY["ffn_hidden_size"],
        64,
    )
    assert {f.uri.rsplit("/", 1)[-1] for f in layout.files} <= {p.name for p in path.glob("*.distcp")}
    assert all(f.size == os.path.getsize(f.uri) for f in layout.files)


@pytest.mark.parametrize(("run", "iteration"), CKPTS)
def test_listing_matches_megatron_load_tensors_metadata(
    request: pytest.FixtureRequest, run: str, iteration: int
) -> None:
    from megatron.core import dist_checkpointing

    path = _ckpt(request, run, iteration)
    layout = open_dcp(str(path), include_optimizer=True)
    theirs = dist_checkpointing.load_tensors_metadata(str(path))
    assert {k: (tuple(t.global_shape), TORCH_TO_CODE[t.dtype]) for k, t in theirs.items()} == {
        k: (t.shape, t.dtype) for k, t in layout.tensors.items()
    }


@pytest.mark.parametrize(("run", "iteration"), CKPTS)
def test_every_chunk_equals_dcp_load(request: pytest.FixtureRequest, run: str, iteration: int) -> None:
    path = _ckpt(request, run, iteration)
    layout = open_dcp(str(path), include_optimizer=True)
    # bf16 models keep their norm weights in fp32 on CPU: one checkpoint, two dtypes
    weights = {t.dtype for k, t in layout.tensors.items() if "norm" not in k}
    assert weights == ({"BF16"} if iteration == 20 else {"F32"})
    assert _assert_bytes_match(path, layout) >= 17


@pytest.mark.parametrize("framework", ["torchtitan", "olmo-core"])
def test_plain_dcp_bytes_and_skipping(titan_root: Path, olmo_root: Path, framework: str) -> None:
    root, step, prefix, optim = (
        (titan_root, TITAN_STEPS[0], "", "optimizer.")
        if framework == "torchtitan"
        else (olmo_root, OLMO_STEPS[0], "model.", "optim.")
    )
    path = root / (f"step-{step}" if framework == "torchtitan" else f"step{step}/model_and_optim")
    layout = open_dcp(str(path))
    assert set(layout.tensors) == {
        prefix + k
        for k in (
            "tok_embeddings.weight",
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "norm.weight",
            "output.weight",
            "freqs",
            "positions",
            "scale",
            "empty",
        )
    }
    assert (
        layout.tensors[prefix + "freqs"].dtype == "BF16"
        and layout.tensors[prefix + "positions"].dtype == "I64"
    )
    assert layout.tensors[prefix + "scale"].shape == () and layout.tensors[prefix + "empty"].numel == 0
    assert layout.skipped and all(key_kind(k) != "model" for k in layout.skipped)
    assert any(k.startswith(optim + "state.") for k in layout.skipped)
    if framework == "torchtitan":
        assert {"train_state.step", "lr_scheduler.last_epoch"} <= set(layout.skipped)
    assert layout.metadata == {}
    _assert_bytes_match(path, layout)


def test_megatron_skips_optimizer_and_rng_and_keeps_extra_state(megatron_tp2: Path) -> None:
    path = megatron_tp2 / "iter_0000010"
    layout = open_dcp(str(path))
    assert any(k.startswith("optimizer.state.exp_avg.") for k in layout.skipped)
    assert any(k.startswith("rng_state/shard_") for k in layout.skipped)
    assert any(k.startswith("rerun_state_machine_state/shard_") for k in layout.skipped)
    assert not any(k.startswith("optimizer.") for k in layout.tensors)
    assert layout.items and all("._extra_state/shard_" in k for k in layout.items)
    md = _metadata(path)
    records = {idx.fqn: info for idx, info in md.storage_data.items() if idx.offset is None}
    for name, item in layout.items.items():
        info = records[name]
        assert layout.files[item.file].uri.endswith("/" + info.relative_path)
        assert (item.byte_offset, item.nbytes) == (info.offset, info.length)
        raw = (path / info.relative_path).read_bytes()[item.byte_offset : item.byte_offset + item.nbytes]
        assert torch.load(io.BytesIO(raw), weights_only=True) == [None]  # local spec: no TE extra state
    with_optim = open_dcp(str(path), include_optimizer=True)
    assert set(with_optim.tensors) - set(layout.tensors) == {
        k for k in layout.skipped if k.startswith("optimizer.")
    }
    assert all(not k.startswith("optimizer.") for k in with_optim.skipped)


def test_megatron_metadata_and_tokens(megatron_tp1: Path, megatron_tp2: Path) -> None:
    for root, tp in ((megatron_tp1, 1), (megatron_tp2, 2)):
        for iteration, bf16, _ in MEGATRON_ITERATIONS:
            layout = open_dcp(str(root / f"iter_{iteration:07d}"))
            md = layout.metadata
            assert md["sharded_backend"] == "torch_dist" and md["iteration"] == iteration
            args = md["args"]
            assert {k: args[k] for k in TINY} == TINY
            assert args["global_batch_size"] == GLOBAL_BATCH and args["tensor_model_parallel_size"] == tp
            assert args["params_dtype"] == ("bfloat16" if bf16 else "float32")
            assert args["normalization"] == "RMSNorm" and args["padded_vocab_size"] == 128
            # a Megatron enum, read without importing megatron
            assert args["attention_backend"].startswith("megatron.core.transformer.enums.AttnBackend(")
            assert megatron_tokens(layout) == iteration * GLOBAL_BATCH * TINY["seq_length"]


def test_megatron_tokens_needs_the_arguments(titan_root: Path) -> None:
    layout = open_dcp(str(titan_root / f"step-{TITAN_STEPS[0]}"))
    with pytest.raises(
        MergeError, match="iteration, global_batch_size, seq_length; give the tokens per step"
    ):
        megatron_tokens(layout)
    layout.metadata = {
        "iteration": 5,
        "args": {"global_batch_size": 4, "seq_length": 8, "rampup_batch_size": [1, 1, 8]},
    }
    with pytest.raises(MergeError, match="rampup_batch_size"):
        megatron_tokens(layout)


# --- S3 (moto): ranged reads only ---------------------------------------------------------------


class _Reads:
    """Records every ranged read of an s3fs instance; whole-object downloads and streams fail the test."""

    def __init__(self, fs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cats: list[tuple[str, int | None, int | None]] = []
        self.finds = 0
        orig_cat, orig_find = fs.cat_file, fs.find

        def cat_file(path: str, start: Any = None, end: Any = None, **kw: Any) -> Any:
            self.cats.append((path, start, end))
            return orig_cat(path, start=start, end=end, **kw)

        def find(*a: Any, **kw: Any) -> Any:
            self.finds += 1
            return orig_find(*a, **kw)

        def forbidden(*a: Any, **kw: Any) -> Any:
            raise AssertionError(f"unexpected call {a}")

        monkeypatch.setattr(fs, "cat_file", cat_file)
        monkeypatch.setattr(fs, "find", find)
        for name in ("open", "get", "get_file", "cat"):
            monkeypatch.setattr(fs, name, forbidden)


def _upload(local: Path, s3_settings: Any, name: str) -> tuple[str, dict[str, Any]]:
    from wsm.store.backend import s3_options

    opts = s3_options(s3_settings)
    uri = f"{s3_settings.store_url}/{name}"
    fs, path = get_fs(uri, opts)
    fs.put(str(local), path, recursive=True)
    return uri, opts


@pytest.mark.s3
def test_s3_listing_and_bytes_with_ranged_reads_only(
    megatron_tp2: Path, s3_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = megatron_tp2 / "iter_0000010"
    uri, opts = _upload(local, s3_settings, "run/iter_0000010")
    fs, _ = get_fs(uri, opts)
    reads = _Reads(fs, monkeypatch)
    layout = open_dcp(uri, opts)
    assert get_fs(uri, opts)[0] is fs

    here = open_dcp(str(local))
    assert {k: (t.dtype, t.shape, t.chunk_key()) for k, t in layout.tensors.items()} == {
        k: (t.dtype, t.shape, t.chunk_key()) for k, t in here.tensors.items()
    }
    assert [(c.byte_offset, c.nbytes) for t in layout.tensors.values() for c in t.chunks] == [
        (c.byte_offset, c.nbytes) for t in here.tensors.values() for c in t.chunks
    ]
    assert layout.items.keys() == here.items.keys() and layout.skipped == here.skipped
    assert layout.metadata == here.metadata

    # Listing read .metadata, common.pt, metadata.json whole and, per model tensor record,
    # one tail and one head range: never optimizer records, never a whole .distcp.
    md = _metadata(local)
    records = {
        (info.relative_path, info.offset, info.length)
        for idx, info in md.storage_data.items()
        if idx.offset is not None and key_kind(idx.fqn) == "model"
    }
    per_record: dict[tuple[str, int, int], list[tuple[int, int]]] = {r: [] for r in records}
    assert all(s is not None and e is not None for p, s, e in reads.cats if p.endswith(".distcp"))
    distcp = [(p, int(s or 0), int(e or 0)) for p, s, e in reads.cats if p.endswith(".distcp")]
    for p, s, e in distcp:
        owner = [r for r in records if p.endswith("/" + r[0]) and r[1] <= s and e <= r[1] + r[2]]
        assert len(owner) == 1, (p, s, e)
        per_record[owner[0]].append((s, e))
    for (_, start, length), ranges in per_record.items():
        tail, head = sorted(ranges, key=lambda r: -r[0])
        assert tail == (start + length - min(length, TAIL_BYTES), start + length)
        assert head[0] == start and head[1] - head[0] < 2048
    fetched = sum(e - s for _, s, e in distcp)
    total = sum(f.stat().st_size for f in local.glob("*.distcp"))
    assert fetched <= len(records) * (TAIL_BYTES + 2048) and fetched < total / 10
    others = {p.rsplit("/", 1)[-1] for p, _, _ in reads.cats if not p.endswith(".distcp")}
    assert others == {".metadata", "common.pt", "metadata.json"}

    reads.cats.clear()
    assert _assert_bytes_match(local, layout) == sum(len(t.chunks) for t in layout.tensors.values())
    assert all(p.endswith(".distcp") and s is not None for p, s, _ in reads.cats)


@pytest.mark.s3
def test_s3_discover_lists_once(titan_root: Path, s3_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, opts = _upload(titan_root, s3_settings, "titan/checkpoint")
    fs, _ = get_fs(uri, opts)
    reads = _Reads(fs, monkeypatch)
    monkeypatch.setattr(fs, "ls", lambda *a, **kw: pytest.fail("discover must not list per directory"))
    found = discover(uri, opts)
    assert [(c.step, c.framework) for c in found] == [(s, "torchtitan") for s in TITAN_STEPS]
    assert found[0].uri == f"{uri}/step-{TITAN_STEPS[0]}"
    assert reads.finds == 1 and not reads.cats


# --- discovery ---------------------------------------------------------------------------------


def test_discover_the_three_layouts(megatron_tp1: Path, titan_root: Path, olmo_root: Path) -> None:
    meg = discover(str(megatron_tp1))
    assert [(c.step, c.framework) for c in meg] == [(it, "megatron") for it, _, _ in MEGATRON_ITERATIONS]
    assert meg[0].uri == str(megatron_tp1 / "iter_0000010")
    titan = discover(str(titan_root))
    assert [(c.step, c.uri) for c in titan] == [(s, str(titan_root / f"step-{s}")) for s in TITAN_STEPS]
    olmo = discover(str(olmo_root))
    assert [(c.step, c.framework, c.uri) for c in olmo] == [
        (s, "olmo-core", str(olmo_root / f"step{s}" / "model_and_optim")) for s in OLMO_STEPS
    ]
    for ck in (*meg, *titan, *olmo):
        assert open_dcp(ck.uri).tensors


def test_discover_counts_only_complete_checkpoints(
    megatron_tp1: Path, titan_root: Path, tmp_path: Path
) -> None:
    meg = shutil.copytree(megatron_tp1, tmp_path / "meg")
    (meg / "iter_0000020" / "common.pt").unlink()
    (meg / "iter_0000030").mkdir()  # a save in progress
    (meg / "iter_0000030" / "__0_0.distcp").write_bytes(b"")
    assert [c.step for c in discover(str(meg))] == [10]
    titan = shutil.copytree(titan_root, tmp_path / "titan")
    (titan / f"step-{TITAN_STEPS[1]}" / ".metadata").unlink()
    (titan / "step-7").mkdir()
    assert [c.step for c in discover(str(titan))] == [TITAN_STEPS[0]]
    assert discover(str(tmp_path / "meg" / "iter_0000010")) == []
    with pytest.raises(MergeError, match="no such directory"):
        discover(str(tmp_path / "nowhere"))


def test_discover_refuses_a_step_found_twice(titan_root: Path, olmo_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(titan_root, tmp_path / "mixed")
    shutil.copytree(olmo_root / f"step{OLMO_STEPS[0]}", root / f"step{TITAN_STEPS[0]}")
    with pytest.raises(MergeError, match=f"step {TITAN_STEPS[0]} is both"):
        discover(str(root))


# --- what fails loudly ----------------------------------------------------------------------------


def _copy(src: Path, tmp_path: Path) -> Path:
    return shutil.copytree(src, tmp_path / "ck")


def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(CorruptFileError, match=match) as exc:
        open_dcp(str(path))
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_truncated_distcp(megatron_tp2: Path, tmp_path: Path) -> None:
    path = _copy(megatron_tp2 / "iter_0000010", tmp_path)
    victim = path / "__0_1.distcp"
    os.truncate(victim, victim.stat().st_size // 2)
    _one_line_error(path, r"__0_1\.distcp: truncated: record '.+' needs bytes up to \d+, file has \d+")


def test_missing_distcp(megatron_tp2: Path, tmp_path: Path) -> None:
    path = _copy(megatron_tp2 / "iter_0000020", tmp_path)
    (path / "__1_0.distcp").unlink()
    _one_line_error(path, r"__1_0\.distcp: missing \(it holds record '.+'\)")


@pytest.mark.parametrize(
    "bad",
    ["garbage", "truncated", "code", "not-metadata"],
    ids=["garbage", "truncated", "code", "other-object"],
)
def test_corrupt_metadata(megatron_tp1: Path, tmp_path: Path, bad: str) -> None:
    path = _copy(megatron_tp1 / "iter_0000010", tmp_path)
    meta = path / ".metadata"
    raw = meta.read_bytes()
    meta.write_bytes(
        {
            "garbage": b"\x00not a pickle at all",
            "truncated": raw[: len(raw) // 2],
            "code": pickle.dumps(os.getcwd),  # a pickle that would call something
            "not-metadata": pickle.dumps({"state_dict_metadata": {}}),
        }[bad]
    )
    _one_line_error(path, r"\.metadata: (not a readable DCP metadata file|holds a dict)")


def _retarget(path: Path, key: str, **change: Any) -> None:
    """Point ``key``'s first stored record elsewhere by rewriting .metadata as torch's writer does."""
    from dataclasses import replace

    md = _metadata(path)
    idx = next(i for i in md.storage_data if i.fqn == key)
    md.storage_data[idx] = replace(md.storage_data[idx], **change)
    with open(path / ".metadata", "wb") as f:
        pickle.dump(md, f)


def _record(md: Any, key: str) -> Any:
    return next(info for idx, info in md.storage_data.items() if idx.fqn.startswith(key))


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("decoder.layers.mlp.linear_fc1._extra_state", r"holds 0 storages, not one tensor"),
        ("rng_state", r"record holds a list, not a tensor"),
        ("embedding.word_embeddings.weight", r"record holds shape \[128, 64\], metadata says \[64\]"),
        ("short", r"not a torch\.save zip record"),
    ],
    ids=["bytes-record", "object-record", "other-tensor", "not-a-record"],
)
def test_record_that_is_not_the_tensor(megatron_tp1: Path, tmp_path: Path, source: str, match: str) -> None:
    path = _copy(megatron_tp1 / "iter_0000010", tmp_path)
    md = _metadata(path)
    target = "decoder.final_layernorm.weight"
    if source == "short":  # the range misses the record's last byte
        info = _record(md, target)
        _retarget(path, target, length=info.length - 1)
    else:
        info = _record(md, source)
        _retarget(path, target, relative_path=info.relative_path, offset=info.offset, length=info.length)
    message = _one_line_error(path, match)
    assert info.relative_path in message and target in message


def test_compressed_record(megatron_tp1: Path, tmp_path: Path) -> None:
    path = _copy(megatron_tp1 / "iter_0000010", tmp_path)
    target = "decoder.final_layernorm.weight"
    info = _record(_metadata(path), target)
    distcp = path / info.relative_path
    record = distcp.read_bytes()[info.offset : info.offset + info.length]
    packed = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(record)) as src,
        zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for member in src.infolist():
            dst.writestr(member.filename, src.read(member))
    assert torch.equal(torch.load(io.BytesIO(packed.getvalue())), torch.load(io.BytesIO(record)))
    offset = distcp.stat().st_size
    with open(distcp, "ab") as f:
        f.write(packed.getvalue())
    _retarget(path, target, offset=offset, length=len(packed.getvalue()))
    _one_line_error(path, r"member 'archive/data\.pkl' is compressed")


def test_not_a_dcp_directory(tmp_path: Path) -> None:
    with pytest.raises(MergeError, match=r"no \.metadata there"):
        open_dcp(str(tmp_path))
    with pytest.raises(MergeError, match="no such directory"):
        open_dcp(str(tmp_path / "missing"))


def test_non_contiguous_record(tmp_path: Path) -> None:
    """DCP's writer keeps a transposed view's strides when its storage is exactly its size."""
    from torch.distributed.checkpoint.state_dict_saver import save

    save({"w": torch.randn(4, 3).t(), "b": torch.randn(2)}, checkpoint_id=str(tmp_path), no_dist=True)
    _one_line_error(tmp_path, r"__0_0\.distcp: record 'w' at \d+: tensor is not C-contiguous")
