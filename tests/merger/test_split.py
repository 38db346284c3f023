"""Splitting a plan into parts (for parallel workers) gives the single-process result bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

from merger_helpers import load_output, random_state, read_tree, save

from merger import MergePlan, MergeStats, execute_merge, finalize_sharded, merge_part, plan_merge
from merger.manifest import build_manifest


def _paths(tmp_path: Path) -> list[str]:
    states = [random_state(i, big=2000) for i in range(4)]
    for s in states:  # more tensors, so parts have something to balance
        for j in range(10):
            s[f"block.{j}.w"] = s["layer.0.weight"] * (j + 1)
    return [save(tmp_path / f"c{i}.safetensors", s) for i, s in enumerate(states)]


def test_parts_equal_single_process_bit_for_bit(tmp_path: Path) -> None:
    plan = plan_merge(_paths(tmp_path), [0.1, 0.2, 0.3, 0.4])
    parts = plan.split(3)
    assert len(parts) == 3
    assert all(p.plan is parts[0].plan for p in parts)
    sizes = [p.bytes_to_read for p in parts]
    assert sum(sizes) == plan.bytes_to_read
    # ship each part through JSON, as a task queue would
    shipped = [MergePlan.from_dict(json.loads(json.dumps(p.plan.to_dict()))) for p in parts]
    out = tmp_path / "parts"
    stats = [merge_part(type(p)(shipped[i], p.index, p.shard_indices), str(out)) for i, p in enumerate(parts)]
    total = MergeStats.combine(stats)
    finalize_sharded(parts[0].plan, str(out), stats, manifest=build_manifest(parts[0].plan, total))
    execute_merge(parts[0].plan, tmp_path / "single")
    assert read_tree(out) == read_tree(tmp_path / "single")
    assert (out / "model.safetensors.index.json").exists()
    # and the tensors equal the unsharded merge's, bit for bit
    execute_merge(plan, tmp_path / "whole")
    whole, split = load_output(tmp_path / "whole"), load_output(out)
    assert set(whole) == set(split)
    for name, t in whole.items():
        assert t.dtype == split[name].dtype and t.view(-1).view(__import__("torch").uint8).equal(
            split[name].view(-1).view(__import__("torch").uint8)
        ), name


def test_split_of_sharded_plan_groups_whole_shards(tmp_path: Path) -> None:
    plan = plan_merge(_paths(tmp_path), [0.25] * 4, max_shard_bytes=20_000)
    parts = plan.split(2)
    assert all(p.plan is plan for p in parts)
    assert sorted(i for p in parts for i in p.shard_indices) == list(range(len(plan.shards)))


def test_finalize_refuses_missing_shards(tmp_path: Path) -> None:
    import pytest

    from merger import MergeError

    plan = plan_merge(_paths(tmp_path), [0.25] * 4)
    parts = plan.split(2)
    stats = merge_part(parts[0], str(tmp_path / "out"))
    with pytest.raises(MergeError, match="shard missing"):
        finalize_sharded(parts[0].plan, str(tmp_path / "out"), [stats])


def test_plans_written_before_output_formats_still_load(tmp_path: Path) -> None:
    """A plan shipped by an older planner (no output format, newest input, items or tensor sources)
    executes as the safetensors merge it was."""
    plan = plan_merge(_paths(tmp_path), [0.25] * 4)
    old = json.loads(json.dumps(plan.to_dict()))
    for key in ("out_format", "newest"):
        del old[key]
    old["tensors"] = [t[:4] for t in old["tensors"]]
    for s in old["shards"]:
        del s["items"]
    back = MergePlan.from_dict(old)
    assert back.out_format == "safetensors" and back.newest_input.uri == plan.newest_input.uri
    execute_merge(back, tmp_path / "old")
    execute_merge(plan, tmp_path / "new")
    assert read_tree(tmp_path / "old") == read_tree(tmp_path / "new")
