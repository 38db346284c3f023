"""Merged values against a float64 reference: dtypes, sharded inputs, non-float tensors, repeats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from merger_helpers import load_output, random_state, read_tree, reference, save, save_sharded

from merger import execute_merge, plan_merge

WEIGHTS = [0.5, 0.3, 0.2]
# float32 accumulation of 3 terms, then rounding to the output dtype: half an ulp plus a little.
# Bound: the output rounding (relative to the result) plus float32 accumulation error (relative to
# the sum of |c_j x_j|, since terms can cancel).
TOL = {torch.bfloat16: 2**-8, torch.float16: 2**-11, torch.float32: 2**-24}
ACC_TOL = 2**-21


def _check(
    out: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor],
    dtype: torch.dtype,
    absref: dict[str, torch.Tensor],
) -> None:
    assert set(out) == set(ref)
    for name, r in ref.items():
        o = out[name]
        assert o.shape == r.shape, name
        if not r.is_floating_point():
            assert torch.equal(o, r), name
            continue
        assert o.dtype == (torch.float32 if name.endswith("norm") else dtype), name
        tol = TOL[o.dtype] * r.abs() + ACC_TOL * absref[name] + 1e-30
        assert bool(((o.double() - r).abs() <= tol).all()), name


def _absref(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return reference(
        [{k: v.abs() if v.is_floating_point() else v for k, v in s.items()} for s in states], WEIGHTS
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_single_file_matches_float64_reference(tmp_path: Path, dtype: torch.dtype) -> None:
    states = [random_state(i, dtype) for i in range(3)]
    paths = [save(tmp_path / f"c{i}.safetensors", s) for i, s in enumerate(states)]
    # a tiny chunk size so the embedding is merged in many slices
    plan = plan_merge(paths, WEIGHTS, chunk_bytes=4096)
    stats = execute_merge(plan, tmp_path / "out")
    _check(load_output(tmp_path / "out"), reference(states, WEIGHTS), dtype, _absref(states))
    assert stats.bytes_read == plan.bytes_to_read
    assert sorted(os.listdir(tmp_path / "out")) == ["merge_manifest.json", "model.safetensors"]


def test_sharded_inputs_and_sharded_output(tmp_path: Path) -> None:
    states = [random_state(i) for i in range(3)]
    inputs = [save_sharded(tmp_path / f"c{i}", s, parts=2 + i) for i, s in enumerate(states)]
    inputs[1] = str(tmp_path / "c1")  # a directory holding an index works too
    plan = plan_merge(inputs, WEIGHTS, max_shard_bytes=20_000)
    assert plan.sharded and len(plan.shards) > 1
    execute_merge(plan, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    _check(load_output(tmp_path / "out"), reference(states, WEIGHTS), torch.bfloat16, _absref(states))


def test_output_dtype_float32_and_float64_accumulation(tmp_path: Path) -> None:
    states = [random_state(i) for i in range(3)]
    paths = [save(tmp_path / f"c{i}.safetensors", s) for i, s in enumerate(states)]
    execute_merge(plan_merge(paths, WEIGHTS, out_dtype="float32", accumulate="float64"), tmp_path / "out")
    out = load_output(tmp_path / "out")
    ref = reference(states, WEIGHTS)
    assert out["embed.weight"].dtype == torch.float32
    assert out["position_ids"].dtype == torch.int64  # non-float keeps its dtype
    assert torch.allclose(out["embed.weight"].double(), ref["embed.weight"], rtol=1e-7, atol=1e-7)


def test_bf16_out_of_bf16_in_by_default(tmp_path: Path) -> None:
    paths = [save(tmp_path / f"c{i}.safetensors", random_state(i)) for i in range(2)]
    execute_merge(plan_merge(paths, [0.5, 0.5]), tmp_path / "out")
    assert load_output(tmp_path / "out")["embed.weight"].dtype == torch.bfloat16


def test_non_float_tensors_are_copied_from_the_newest(tmp_path: Path) -> None:
    """Non-float tensors are never averaged: they come from the newest input (the last one when
    no input knows its step), and only that input's bytes are read."""
    states = [random_state(i) for i in range(3)]
    for i, s in enumerate(states):
        s["position_ids"] = s["position_ids"] + 100 * i
    paths = [save(tmp_path / f"c{i}.safetensors", s) for i, s in enumerate(states)]
    plan = plan_merge(paths, WEIGHTS)
    assert plan.newest_input.uri == paths[2]
    stats = execute_merge(plan, tmp_path / "out")
    assert torch.equal(load_output(tmp_path / "out")["position_ids"], states[2]["position_ids"])
    int_bytes = states[0]["position_ids"].numel() * 8
    assert stats.bytes_read == plan.bytes_to_read
    assert plan.bytes_to_read == 3 * (sum(t.in_nbytes for t in plan.tensors) - int_bytes) + int_bytes
    # the newest by step when every input knows it: the store's tokens here
    for ck, tokens in zip(plan.inputs, (300, 100, 200), strict=True):
        ck.extra["tokens"] = tokens
    plan = plan_merge(list(plan.inputs), WEIGHTS)
    assert plan.newest_input.uri == paths[0]
    execute_merge(plan, tmp_path / "by-step")
    assert torch.equal(load_output(tmp_path / "by-step")["position_ids"], states[0]["position_ids"])


def test_repeat_runs_are_bit_identical(tmp_path: Path) -> None:
    paths = [save(tmp_path / f"c{i}.safetensors", random_state(i)) for i in range(3)]
    execute_merge(plan_merge(paths, WEIGHTS, max_shard_bytes=30_000), tmp_path / "a", threads=1)
    execute_merge(
        plan_merge(paths, WEIGHTS, max_shard_bytes=30_000, chunk_bytes=8192), tmp_path / "b", threads=2
    )
    assert read_tree(tmp_path / "a") == read_tree(tmp_path / "b")


def test_manifest_records_inputs_and_hashes(tmp_path: Path) -> None:
    import hashlib
    import json

    paths = [save(tmp_path / f"c{i}.safetensors", random_state(i)) for i in range(3)]
    execute_merge(plan_merge(paths, WEIGHTS), tmp_path / "out", hash_inputs=True)
    m = json.loads((tmp_path / "out" / "merge_manifest.json").read_text())
    assert [i["c"] for i in m["inputs"]] == WEIGHTS
    assert m["inputs"][0]["sha256"] == hashlib.sha256(Path(paths[0]).read_bytes()).hexdigest()
    out_file = tmp_path / "out" / "model.safetensors"
    assert m["output"]["files"][0]["sha256"] == hashlib.sha256(out_file.read_bytes()).hexdigest()
    assert m["bytes_read"] > 0 and "total" in m["timings"]
