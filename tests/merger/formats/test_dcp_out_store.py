"""DCP merges from S3 (ranged reads only, counted) and into the store (atomic, in either format)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from dcp_merge_fixtures import BF16_ITERATIONS

from merger import execute_merge, plan_merge
from merger.errors import CorruptFileError
from merger.formats.dcp import open_dcp
from merger.formats.dcp_runs import megatron_tokens
from merger.formats.sources import get_fs
from merger.formats.torch_record import TAIL_BYTES
from merger.manifest import MANIFEST_NAME
from merger.provenance import AnnealSelection
from merger.store_io import publish_merge
from theory import CurveSpec, select_checkpoints
from wsm.store import Store, layout

WEIGHTS = [0.2, 0.3, 0.5]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST_NAME, "manifest.json")
    }


class _Reads:
    """Every ranged read of an s3fs instance; whole-object reads and streams fail the test."""

    def __init__(self, fs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cats: list[tuple[str, int | None, int | None]] = []
        orig_cat, orig_open = fs.cat_file, fs.open

        def cat_file(path: str, start: Any = None, end: Any = None, **kw: Any) -> Any:
            self.cats.append((path, start, end))
            return orig_cat(path, start=start, end=end, **kw)

        def open_(path: str, mode: str = "rb", **kw: Any) -> Any:
            if "r" in mode:
                raise AssertionError(f"streaming read of {path}")
            return orig_open(path, mode, **kw)

        def forbidden(*a: Any, **kw: Any) -> Any:
            raise AssertionError(f"unexpected call {a}")

        monkeypatch.setattr(fs, "cat_file", cat_file)
        monkeypatch.setattr(fs, "open", open_)
        for name in ("get", "get_file", "cat"):
            monkeypatch.setattr(fs, name, forbidden)


@pytest.mark.s3
def test_s3_merge_fetches_exactly_the_bytes_it_needs(
    megatron_merge_tp2: Path, s3_settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from wsm.store.backend import s3_options

    opts = s3_options(s3_settings)
    local = [megatron_merge_tp2 / "bf16" / f"iter_{it:07d}" for it in BF16_ITERATIONS]
    uris = [f"{s3_settings.store_url}/ext/iter_{it:07d}" for it in BF16_ITERATIONS]
    fs, _ = get_fs(uris[0], opts)
    for src, uri in zip(local, uris, strict=True):
        fs.put(str(src), get_fs(uri, opts)[1], recursive=True)
    reads = _Reads(fs, monkeypatch)

    plan = plan_merge(uris, WEIGHTS, storage_options=opts, out_format="torch_dist")
    distcp = [(p, s, e) for p, s, e in reads.cats if p.endswith(".distcp")]
    records = sum(len(t.chunks) for ck in plan.inputs for t in ck.tensors.values())
    assert all(s is not None and e is not None for _, s, e in distcp)
    # planning: a tail and a head per model record, never tensor data
    assert sum(e - s for _, s, e in distcp if s is not None and e is not None) <= records * (
        TAIL_BYTES + 2048
    )

    reads.cats.clear()
    stats = execute_merge(plan, tmp_path / "out")
    data = [(p, s, e) for p, s, e in reads.cats if p.endswith(".distcp")]
    assert data and all(s is not None and e is not None for _, s, e in data)
    fetched = sum(e - s for _, s, e in data if s is not None and e is not None)
    assert fetched == plan.bytes_to_read == stats.bytes_read  # every byte needed, once, nothing more
    others = sorted(
        {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p, _, _ in reads.cats}
        - {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p, _, _ in data}
    )
    newest = f"iter_{BF16_ITERATIONS[-1]:07d}"
    assert others == [f"{newest}/common.pt", f"{newest}/metadata.json"]  # the final step's small files
    execute_merge(plan_merge(local, WEIGHTS, out_format="torch_dist"), tmp_path / "local")
    mine, theirs = _tree(tmp_path / "out"), _tree(tmp_path / "local")
    assert mine.keys() == theirs.keys()
    for name in mine:
        if not name.endswith(("common.pt", ".metadata")):  # those name the input URIs
            assert mine[name] == theirs[name], name


def _selection(paths: list[Path]) -> tuple[list[Any], AnnealSelection]:
    layouts = [open_dcp(str(p)) for p in paths]
    for ck in layouts:
        ck.extra["tokens"] = megatron_tokens(ck)
    tokens = [ck.extra["tokens"] for ck in layouts]
    sel = select_checkpoints(tokens, CurveSpec("linear"), tokens[-1], interval=tokens[0])
    assert list(sel.tokens) == tokens
    return layouts, AnnealSelection.of("ext", sel, {t: f"{i:064x}" for i, t in enumerate(tokens)})


@pytest.mark.parametrize("out_format", ["safetensors", "torch_dist"])
def test_publish_to_the_store_in_either_format(
    megatron_merge_tp2: Path, store: Store, tmp_path: Path, out_format: str
) -> None:
    paths = [megatron_merge_tp2 / "bf16" / f"iter_{it:07d}" for it in BF16_ITERATIONS]
    layouts, sel = _selection(paths)
    plan = plan_merge(layouts, list(sel.weights), selection=sel, out_format=out_format)
    manifest, _ = publish_merge(store, plan, name="anneal-dcp")
    store.verify(manifest)  # sizes and sha256 of every file, .metadata included
    names = sorted(f.name for f in manifest.files)
    if out_format == "torch_dist":
        # Megatron-LM's layout, as the store keeps Megatron checkpoints
        iter_dir = "iter_0000300"
        assert names == [
            f"{iter_dir}/{n}" for n in (".metadata", "__0_0.distcp", "common.pt", "metadata.json")
        ] + ["latest_checkpointed_iteration.txt"]
        assert layout.dcp_dir_of(names) == iter_dir
        assert store.read_file(manifest, "latest_checkpointed_iteration.txt") == b"300"
    else:
        assert names == ["model.safetensors"]
    assert manifest.config["format"] == out_format and manifest.bytes_read == plan.bytes_to_read
    assert manifest.config["merge"]["skipped"] == plan.skipped
    # the same bytes as a local merge of the same plan
    execute_merge(plan, tmp_path / "local")
    local = tmp_path / "local"
    for name in names:
        assert store.read_file(manifest, name) == (local / name).read_bytes(), name
    if out_format == "torch_dist" and store.is_local:
        # Megatron reads the published model directory as it is
        from torch.distributed.checkpoint.state_dict_loader import load

        path = os.path.dirname(store.local_path(manifest.path(f"{iter_dir}/.metadata")) or "")
        state = {"embedding.word_embeddings.weight": torch.empty(128, 64, dtype=torch.bfloat16)}
        load(state, checkpoint_id=path, no_dist=True)
        ref = {"embedding.word_embeddings.weight": torch.empty(128, 64, dtype=torch.bfloat16)}
        load(ref, checkpoint_id=str(local / iter_dir), no_dist=True)
        assert torch.equal(state["embedding.word_embeddings.weight"], ref["embedding.word_embeddings.weight"])


def test_a_failed_merge_publishes_nothing(
    megatron_merge_tp2: Path, local_store: Store, tmp_path: Path
) -> None:
    paths = [
        Path(shutil.copytree(megatron_merge_tp2 / "bf16" / f"iter_{it:07d}", tmp_path / f"iter_{it:07d}"))
        for it in BF16_ITERATIONS
    ]
    layouts, sel = _selection(paths)
    plan = plan_merge(layouts, list(sel.weights), selection=sel, out_format="torch_dist")
    victim = paths[2] / "__0_0.distcp"
    os.truncate(victim, victim.stat().st_size // 2)
    with pytest.raises(
        CorruptFileError,
        match=r"__0_0\.distcp: truncated or replaced since the merge was planned \(\d+ bytes, \d+ planned\)",
    ):
        publish_merge(local_store, plan, name="anneal-dcp")
    assert local_store.list_models("ext") == []
    models = local_store.full_path("runs/ext/models")
    assert not os.path.exists(models) or os.listdir(models) == []  # no staging left either


def test_split_merge_publishes_the_same_tree(
    megatron_merge_tp2: Path, local_store: Store, tmp_path: Path
) -> None:
    """Parts write their files into a scratch directory; the final step publishes them in
    Megatron's layout with the metadata: the same bytes as one process publishing."""
    from merger import merge_part
    from merger.store_io import publish_parts

    paths = [megatron_merge_tp2 / "bf16" / f"iter_{it:07d}" for it in BF16_ITERATIONS]
    layouts, sel = _selection(paths)
    parts = plan_merge(layouts, list(sel.weights), selection=sel, out_format="torch_dist").split(2)
    stats = [merge_part(p, str(tmp_path / "scratch")) for p in parts]
    split = publish_parts(local_store, parts[0].plan, str(tmp_path / "scratch"), stats, name="split")
    one, _ = publish_merge(local_store, parts[0].plan, name="one")
    assert [(f.name, f.sha256) for f in split.files] == [(f.name, f.sha256) for f in one.files]
    assert sum(f.name.endswith(".distcp") for f in split.files) == 2
