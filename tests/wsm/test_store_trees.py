"""A format's directory tree as one artifact: Megatron's ``iter_<N>/`` with DCP's fixed file names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wsm.store import IntegrityError, InvalidNameError, Store, layout

TREE = {
    "iter_0000100/.metadata": b"metadata",
    "iter_0000100/__0_0.distcp": b"rank 0" * 1000,
    "iter_0000100/__1_0.distcp": b"rank 1" * 999,
    "iter_0000100/common.pt": b"common",
}


def _tree(root: Path) -> Path:
    for name, data in TREE.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_a_tree_is_published_listed_and_verified(store: Store, tmp_path: Path) -> None:
    src = _tree(tmp_path / "scratch")
    with store.publish_checkpoint("r1", 100, step=100) as pub:
        entries = pub.put_tree(src / "iter_0000100", "iter_0000100", link=True)
        pub.write_bytes(layout.MEGATRON_TRACKER_FILE, b"100")
    assert [e.name for e in entries] == sorted(TREE)
    manifest = store.get_checkpoint("r1", 100)
    assert {f.name: f.size for f in manifest.files} == {
        **{k: len(v) for k, v in TREE.items()},
        layout.MEGATRON_TRACKER_FILE: 3,
    }
    store.verify(manifest)  # sizes with one recursive listing, then every sha256
    assert store.read_file(manifest, "iter_0000100/.metadata") == b"metadata"
    assert layout.dcp_dir_of(f.name for f in manifest.files) == "iter_0000100"


def test_verify_catches_a_truncated_file_inside_the_tree(local_store: Store, tmp_path: Path) -> None:
    src = _tree(tmp_path / "scratch")
    with local_store.publish_checkpoint("r1", 100) as pub:
        pub.put_tree(src / "iter_0000100", "iter_0000100")
    manifest = local_store.get_checkpoint("r1", 100)
    path = local_store.local_path(manifest.path("iter_0000100/__1_0.distcp"))
    assert path is not None
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(IntegrityError, match=r"__1_0\.distcp"):
        local_store.verify(manifest, full=False)


def test_local_trees_are_linked_not_copied_and_an_abort_keeps_the_source(
    local_store: Store, tmp_path: Path
) -> None:
    src = _tree(tmp_path / "scratch") / "iter_0000100"
    with pytest.raises(RuntimeError), local_store.publish_checkpoint("r1", 100) as pub:
        pub.put_tree(src, "iter_0000100", link=True)
        raise RuntimeError("killed mid-publish")
    assert local_store.list_checkpoints("r1") == []
    assert sorted(p.name for p in src.iterdir()) == sorted(n.split("/")[1] for n in TREE)  # retry possible
    with local_store.publish_checkpoint("r1", 100) as pub:
        pub.put_tree(src, "iter_0000100", link=True)
    published = local_store.local_path(local_store.get_checkpoint("r1", 100).path("iter_0000100/common.pt"))
    assert published is not None and os.stat(published).st_ino == os.stat(src / "common.pt").st_ino


@pytest.mark.parametrize("bad", [".metadata", "a/b", "__0_0.distcp", ".hidden", "_x"])
def test_single_files_keep_the_strict_names(local_store: Store, bad: str) -> None:
    """A single file has a safe name; DCP's names only occur inside a format's tree (a torch_dist
    checkpoint or model is Megatron's ``iter_<N>/`` layout)."""
    with pytest.raises(InvalidNameError), local_store.publish_checkpoint("r1", 1) as pub:
        pub.write_bytes(bad, b"x")


@pytest.mark.parametrize("bad", ["../x", "iter/../../x", ".tmp-x", "a/.trash-y/z", "a//b", "."])
def test_trees_refuse_traversal_and_staging_names(local_store: Store, tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidNameError), local_store.publish_checkpoint("r1", 1) as pub:
        pub.put_tree(_tree(tmp_path / "scratch") / "iter_0000100", bad)
    with pytest.raises(InvalidNameError):
        local_store.exists(f"runs/r1/{bad}")


def test_only_a_complete_megatron_layout_has_a_dcp_dir() -> None:
    names = ["iter_0000100/.metadata", "iter_0000100/__0_0.distcp"]
    assert layout.dcp_dir_of(names) is None  # no tracker file
    assert layout.dcp_dir_of([*names, layout.MEGATRON_TRACKER_FILE]) == "iter_0000100"
    assert layout.dcp_dir_of(["iter_0000100/__0_0.distcp", layout.MEGATRON_TRACKER_FILE]) is None
    assert layout.megatron_iter_dir(100) == "iter_0000100"
