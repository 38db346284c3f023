"""Merging from the store: theory's selection, ranged reads on S3 (moto), atomic publish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from merger_helpers import random_state, read_tree, save
from safetensors.torch import load
from safetensors.torch import save as st_save

from merger import execute_merge, plan_merge
from merger.formats.sources import get_fs
from merger.store_io import plan_selection, publish_merge, select
from theory import CurveSpec, select_checkpoints
from wsm.store import Store

B = 10**9


def _publish_run(store: Store, count: int = 4) -> list[dict[str, torch.Tensor]]:
    states = [random_state(i) for i in range(count)]
    for i, s in enumerate(states):
        with store.publish_checkpoint("r1", (i + 1) * 10 * B, step=i + 1) as pub:
            pub.write_bytes("model.safetensors", st_save(s))
    return states


class _Recorder:
    """Wraps s3fs's reads to record every data request the merge makes (and forbid downloads)."""

    def __init__(self, fs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        # fsspec mirrors sync methods onto each instance, so the instance is what gets wrapped;
        # the merge reaches this same cached instance through url_to_fs (asserted below).
        self.cats: list[tuple[str, int | None, int | None]] = []
        orig_cat = fs.cat_file

        def cat_file(path: str, start: Any = None, end: Any = None, **kw: Any) -> Any:
            self.cats.append((path, start, end))
            return orig_cat(path, start=start, end=end, **kw)

        def no_download(rpath: Any, *a: Any, **kw: Any) -> Any:
            raise AssertionError(f"whole-file download of {rpath}")

        orig_open = fs.open

        def open_(path: str, mode: str = "rb", **kw: Any) -> Any:
            if "r" in mode:
                raise AssertionError(f"streaming read of {path}")
            return orig_open(path, mode, **kw)  # the publisher's uploads

        monkeypatch.setattr(fs, "cat_file", cat_file)
        monkeypatch.setattr(fs, "open", open_)
        for name in ("get_file", "get"):
            monkeypatch.setattr(fs, name, no_download)

    def data_reads(self) -> list[tuple[str, int | None, int | None]]:
        return [c for c in self.cats if c[0].endswith(".safetensors")]


@pytest.mark.s3
def test_s3_merge_uses_only_ranged_reads_and_publishes(
    s3_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    states = _publish_run(s3_store)
    rec = _Recorder(s3_store.fs, monkeypatch)
    curve = CurveSpec("1-sqrt")
    plan = plan_selection(s3_store, select(s3_store, "r1", curve, "30B", interval="10B"), chunk_bytes=65536)
    assert get_fs(plan.inputs[0].uri, plan.storage_options)[0] is s3_store.fs
    sel = select_checkpoints([10 * B, 20 * B, 30 * B, 40 * B], curve, "30B", interval="10B")
    assert [ck.extra["tokens"] for ck in plan.inputs] == list(sel.tokens) == [20 * B, 30 * B, 40 * B]
    assert list(plan.weights) == pytest.approx(list(sel.c))
    _, stats = publish_merge(s3_store, plan, name="anneal-test")

    reads = rec.data_reads()
    assert reads and all(start is not None and end is not None for _, start, end in reads), reads
    sizes = {f.uri.split("://", 1)[1]: f.size for ck in plan.inputs for f in ck.files}
    fetched = sum(end - start for _, start, end in reads if start is not None and end is not None)
    # Every byte of every file exactly once (merged tensors as they stream; the header and the
    # non-float tensors of older inputs, which are copied from the newest, as holes fetched for
    # the block checksums), plus the headers once more at planning.
    header_bytes = sum(min(t.chunks[0].byte_offset for t in ck.tensors.values()) for ck in plan.inputs)
    assert plan.bytes_to_read <= sum(sizes.values())
    assert fetched == header_bytes + sum(sizes.values())
    assert stats.verified_inputs == [True] * len(plan.inputs)

    # the published model: manifest provenance and the same bytes as a local merge
    got = s3_store.get_model("r1", "anneal-test")
    assert got.kind == "anneal" and got.window is not None and got.window.end_tokens == 40 * B
    assert [s.tokens for s in got.sources] == [20 * B, 30 * B, 40 * B]
    ckpt = s3_store.get_checkpoint("r1", 20 * B)
    assert got.sources[0].sha256 == ckpt.file("model.safetensors").sha256
    assert got.bytes_read == stats.bytes_read == plan.bytes_to_read
    merged = s3_store.read_file(got, "model.safetensors")
    local = [save(tmp_path / f"c{i}.safetensors", s) for i, s in enumerate(states[1:])]
    execute_merge(plan_merge(local, list(plan.weights)), tmp_path / "local")
    assert merged == read_tree(tmp_path / "local")["model.safetensors"]
    assert set(load(merged)) == set(states[0])


@pytest.mark.s3
def test_s3_uri_inputs_without_the_store(s3_store: Store, tmp_path: Path) -> None:
    _publish_run(s3_store, 2)
    uris = [
        s3_store.fs.unstrip_protocol(s3_store.full_path(f"runs/r1/checkpoints/{t:018d}/model.safetensors"))
        for t in (10 * B, 20 * B)
    ]
    opts = dict(s3_store.fs.storage_options)
    execute_merge(plan_merge(uris, [0.5, 0.5], storage_options=opts), tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_local_store_merge_and_publish(local_store: Store) -> None:
    _publish_run(local_store)
    plan = plan_selection(local_store, select(local_store, "r1", CurveSpec("linear"), "40B"))
    assert plan.selection is not None
    assert list(plan.weights) == pytest.approx([0.25] * 4)
    manifest, _ = publish_merge(local_store, plan)
    assert manifest.name == plan.selection.model_name() and manifest.name.startswith(
        "anneal-linear-w40B-at-40B-n4-"
    )
    assert local_store.list_models("r1")[0].dtype == "bfloat16"
    local_store.verify(manifest)
