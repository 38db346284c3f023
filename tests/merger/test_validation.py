"""Validation before any tensor data is read: weights, names, shapes, dtypes, corrupt files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from merger_helpers import random_state, save, save_sharded

from merger import CorruptFileError, MergeError, MismatchError, WeightError, execute_merge, plan_merge


def _three(tmp_path: Path, edit: dict[str, torch.Tensor | None] | None = None) -> list[str]:
    paths = []
    for i in range(3):
        s = random_state(i)
        if i == 2 and edit:
            for k, v in edit.items():
                if v is None:
                    del s[k]
                else:
                    s[k] = v
        paths.append(save(tmp_path / f"c{i}.safetensors", s))
    return paths


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([0.5, 0.5, 0.5], "weights sum to 1.5, not 1"),
        ([1.2, -0.1, -0.1], "weight 1 is negative"),
        ([float("nan"), 0.5, 0.5], "weight 0 (nan) is not a finite number"),
        ([0.5, 0.5], "2 weights for 3 checkpoints"),
    ],
)
def test_bad_weights(tmp_path: Path, weights: list[float], message: str) -> None:
    with pytest.raises(WeightError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_merge(_three(tmp_path), weights)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        MismatchError,
        match=r"c2\.safetensors: tensor 'layer\.0\.norm' \(present in .*c0\.safetensors\) is missing",
    ):
        plan_merge(_three(tmp_path, {"layer.0.norm": None}), [0.4, 0.3, 0.3])


def test_extra_tensor_is_named(tmp_path: Path) -> None:
    with pytest.raises(MismatchError, match=r"c2\.safetensors: tensor 'extra' is not in"):
        plan_merge(_three(tmp_path, {"extra": torch.zeros(2)}), [0.4, 0.3, 0.3])


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        MismatchError,
        match=r"c2\.safetensors: tensor 'layer\.0\.weight' has shape \[33, 18\], but \[33, 17\]",
    ):
        plan_merge(
            _three(tmp_path, {"layer.0.weight": torch.zeros(33, 18, dtype=torch.bfloat16)}), [0.4, 0.3, 0.3]
        )


def test_dtype_mismatch_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        MismatchError, match=r"c2\.safetensors: tensor 'layer\.0\.weight' has dtype F16, but BF16"
    ):
        plan_merge(
            _three(tmp_path, {"layer.0.weight": torch.zeros(33, 17, dtype=torch.float16)}), [0.4, 0.3, 0.3]
        )


def test_sharded_mismatch_names_the_shard(tmp_path: Path) -> None:
    a = save_sharded(tmp_path / "a", random_state(0))
    s = random_state(1)
    s["scalar"] = torch.zeros((), dtype=torch.float32)
    b = save_sharded(tmp_path / "b", s)
    with pytest.raises(
        MismatchError, match=r"b/model-0000\d-of-00002\.safetensors: tensor 'scalar' has dtype F32"
    ):
        plan_merge([a, b], [0.5, 0.5])


def test_truncated_file_is_caught_at_plan_time(tmp_path: Path) -> None:
    paths = _three(tmp_path)
    size = os.path.getsize(paths[1])
    with open(paths[1], "r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(
        CorruptFileError,
        match=rf"c1\.safetensors: truncated: the header describes {size} bytes but the file has {size - 10}",
    ):
        plan_merge(paths, [0.4, 0.3, 0.3])


def test_file_truncated_after_planning_fails_without_output(tmp_path: Path) -> None:
    paths = _three(tmp_path)
    plan = plan_merge(paths, [0.4, 0.3, 0.3], chunk_bytes=4096)
    with open(paths[2], "r+b") as f:
        f.truncate(os.path.getsize(paths[2]) // 2)
    with pytest.raises(CorruptFileError, match=r"c2\.safetensors: truncated"):
        execute_merge(plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"abc", "3 bytes is too short for a safetensors file"),
        (struct.pack("<Q", 10**12) + b"{}", "header length 1000000000000 is impossible"),
        (struct.pack("<Q", 5) + b"{nope", "header is not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "header is not a JSON object"),
    ],
)
def test_corrupt_header(tmp_path: Path, content: bytes, message: str) -> None:
    good = save(tmp_path / "good.safetensors", random_state(0))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(CorruptFileError, match=rf"bad\.safetensors: {message}"):
        plan_merge([good, str(bad)], [0.5, 0.5])


def _rewrite_header(path: str, edit: dict[str, object]) -> None:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.update(edit)
    new = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_inconsistent_offsets(tmp_path: Path) -> None:
    good = save(tmp_path / "good.safetensors", random_state(0))
    bad = save(tmp_path / "bad.safetensors", random_state(1))
    _rewrite_header(bad, {"scalar": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 2]}})
    with pytest.raises(
        CorruptFileError, match=r"bad\.safetensors: tensor 'scalar' spans 2 bytes but shape \[3\]"
    ):
        plan_merge([good, bad], [0.5, 0.5])


def test_index_pointing_at_wrong_shard(tmp_path: Path) -> None:
    index = save_sharded(tmp_path / "a", random_state(0))
    obj = json.loads(Path(index).read_text())
    obj["weight_map"]["scalar"] = "model-00009-of-00009.safetensors"
    Path(index).write_text(json.dumps(obj))
    with pytest.raises(MergeError, match=r"no such file|does not hold it"):
        plan_merge([index, save(tmp_path / "b.safetensors", random_state(1))], [0.5, 0.5])


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(MergeError, match=r"nope\.safetensors: no such file"):
        plan_merge([str(tmp_path / "nope.safetensors")], [1.0])


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    paths = _three(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(MergeError, match="exists and is not empty"):
        execute_merge(plan_merge(paths, [0.4, 0.3, 0.3]), tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "x"


def test_cancel_from_progress_callback_leaves_nothing(tmp_path: Path) -> None:
    paths = _three(tmp_path)

    def cancel(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute_merge(
            plan_merge(paths, [0.4, 0.3, 0.3], chunk_bytes=4096), tmp_path / "out", on_progress=cancel
        )
    assert sorted(os.listdir(tmp_path)) == ["c0.safetensors", "c1.safetensors", "c2.safetensors"]
