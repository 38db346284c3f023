"""Merging Megatron and plain DCP checkpoints into safetensors or torch_dist, against references.

Inputs are saved by megatron-core (``dcp_merge_fixtures``) or torch's DCP. References: the
float64 merge of what torch's DCP loader reads; a GPTModel loaded by Megatron's own
``dist_checkpointing.load`` (logits).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from dcp_merge_fixtures import BF16_ITERATIONS, FP32_ITERATIONS
from safetensors.torch import load_file

from merger import MergePlan, MergeStats, execute_merge, finalize_sharded, merge_part, plan_merge
from merger.errors import CorruptFileError, MergeError, MismatchError
from merger.formats.base import CheckpointLayout
from merger.formats.dcp import open_dcp
from merger.formats.dcp_writer import PROVENANCE_KEY
from merger.formats.dtypes import DTYPES
from merger.manifest import MANIFEST_NAME, build_manifest

ITERATIONS = {"bf16": BF16_ITERATIONS, "fp32": FP32_ITERATIONS}
WEIGHTS = {"bf16": [0.2, 0.3, 0.5], "fp32": [0.35, 0.65]}
TOL = {"BF16": 2**-7, "F32": 2e-6}  # one ulp of the output dtype, relative


def _run(request: pytest.FixtureRequest, tp: int) -> Path:
    root: Path = request.getfixturevalue(f"megatron_merge_tp{tp}")
    return root


def _inputs(root: Path, dtype: str) -> list[Path]:
    return [root / dtype / f"iter_{it:07d}" for it in ITERATIONS[dtype]]


def _dcp_load(path: Path | str, layout: CheckpointLayout) -> dict[str, torch.Tensor]:
    """Every listed tensor as torch's DCP loader gives it (whole, resharded)."""
    from torch.distributed.checkpoint.state_dict_loader import load

    state = {k: torch.empty(t.shape, dtype=DTYPES[t.dtype][0]) for k, t in layout.tensors.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load(state, checkpoint_id=str(path), no_dist=True)
    return state


def _reference(paths: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """The merge in float64 of what torch's DCP loader reads; non-float tensors from the last input."""
    states = [_dcp_load(p, open_dcp(str(p))) for p in paths]
    out = {}
    for name, t in states[-1].items():
        if t.is_floating_point():
            out[name] = sum(
                (w * s[name].double() for w, s in zip(weights, states, strict=True)), torch.zeros(())
            )
        else:
            out[name] = t
    return out


def _assert_merged(
    got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], dtypes: dict[str, str]
) -> None:
    assert set(got) == set(ref)
    for name, t in got.items():
        assert t.shape == ref[name].shape, name
        if not t.is_floating_point():
            assert torch.equal(t, ref[name]), name
            continue
        # float32 accumulation then one rounding: within one ulp of the float64 reference
        tol = TOL[dtypes[name]]
        torch.testing.assert_close(t.double(), ref[name], rtol=tol, atol=1e-7, msg=name)


def _iter_dir(out: Path) -> Path:
    return out / f"iter_{int((out / 'latest_checkpointed_iteration.txt').read_text()):07d}"


# --- merged tensors against a float64 reference ----------------------------------------------------


@pytest.mark.parametrize("out_format", ["safetensors", "torch_dist"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("tp", [1, 2])
def test_megatron_merge_matches_float64_reference(
    request: pytest.FixtureRequest, tmp_path: Path, tp: int, dtype: str, out_format: str
) -> None:
    paths = _inputs(_run(request, tp), dtype)
    weights = WEIGHTS[dtype]
    plan = plan_merge(paths, weights, out_format=out_format)
    assert plan.newest_input.uri == str(paths[-1])  # by iteration
    stats = execute_merge(plan, tmp_path / "out")
    assert stats.bytes_read == plan.bytes_to_read
    in_layout = plan.inputs[0]
    dtypes = {k: t.dtype for k, t in in_layout.tensors.items()}
    ref = _reference(paths, weights)
    if out_format == "safetensors":
        # TP=2 row-parallel weights are split along dimension 1: assembled into whole tensors
        got = load_file(str(tmp_path / "out" / "model.safetensors"))
        manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
        assert manifest["dropped_items"] == sorted(in_layout.items)
    else:
        out = _iter_dir(tmp_path / "out")
        assert out.name == f"iter_{ITERATIONS[dtype][-1]:07d}"
        layout = open_dcp(str(out))
        got = _dcp_load(out, layout)
        # the inputs' chunk layout is kept: a TP=2 input gives a TP=2-sharded output
        assert {k: sorted(t.chunk_key()) for k, t in layout.tensors.items()} == {
            k: sorted(t.chunk_key()) for k, t in in_layout.tensors.items()
        }
        assert layout.metadata["iteration"] == ITERATIONS[dtype][-1]
        assert layout.metadata["args"] == plan.newest_input.metadata["args"]
        # byte items (TE _extra_state) are the newest input's records, verbatim
        newest = plan.newest_input
        assert layout.items.keys() == newest.items.keys() and newest.items
        for name, item in layout.items.items():
            src = newest.items[name]
            mine = (out / Path(layout.files[item.file].uri).name).read_bytes()
            theirs = Path(newest.files[src.file].uri).read_bytes()
            assert (
                mine[item.byte_offset : item.byte_offset + item.nbytes]
                == theirs[src.byte_offset : src.byte_offset + src.nbytes]
            )
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        assert manifest["dropped_items"] == []
    _assert_merged(got, ref, dtypes)
    # only model state is merged; what was skipped is in the manifest
    assert manifest["skipped"] == plan.skipped
    assert any(k.startswith("rng_state/") for k in manifest["skipped"])
    assert manifest["copied_from"] == str(paths[-1]) and manifest["out_format"] == out_format


# --- loading the torch_dist output into a GPTModel ---------------------------------------------------


def _gpt(bf16: bool, seed: int = 7) -> Any:
    from dcp_fixtures import TINY, VOCAB

    from trainer.config import ModelConfig
    from trainer.distributed import init_distributed
    from trainer.model import build_model

    init_distributed(1)
    return build_model(ModelConfig(preset=None, **TINY), VOCAB, seed=seed, tensor_parallel=1, bf16=bf16)


def _megatron_load(model: Any, path: Path) -> Any:
    from megatron.core import dist_checkpointing

    # as Megatron-LM loads: the model's sharded state under "model", the common state beside it
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path))
    model.load_state_dict(state["model"])
    return model


def _logits(model: Any) -> torch.Tensor:
    from dcp_fixtures import TINY, VOCAB

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (2, TINY["seq_length"]), generator=g)
    positions = torch.arange(TINY["seq_length"]).expand(2, -1)
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(tokens, positions, None)
    return out.float()


@pytest.mark.parametrize(("tp", "dtype"), [(1, "fp32"), (2, "fp32"), (1, "bf16")])
def test_torch_dist_output_loads_into_gptmodel_with_reference_logits(
    request: pytest.FixtureRequest, tmp_path: Path, tp: int, dtype: str
) -> None:
    """Megatron's dist_checkpointing.load reads the merged output at TP=1 (a TP=2 one resharded)
    and the model computes the logits of the float64 reference merge."""
    paths = _inputs(_run(request, tp), dtype)
    weights = WEIGHTS[dtype]
    execute_merge(plan_merge(paths, weights, out_format="torch_dist"), tmp_path / "out")
    bf16 = dtype == "bf16"
    # the reference: each input loaded by Megatron at TP=1, merged in float64, rounded once
    states = [dict(_megatron_load(_gpt(bf16), p).state_dict()) for p in paths]
    ref_model = _gpt(bf16)
    merged = {}
    for name, t in states[-1].items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            acc = sum((w * s[name].double() for w, s in zip(weights, states, strict=True)), torch.zeros(()))
            merged[name] = acc.to(t.dtype)
        else:
            merged[name] = t
    ref_model.load_state_dict(merged)
    got_model = _megatron_load(_gpt(bf16, seed=99), _iter_dir(tmp_path / "out"))
    for name, p in got_model.named_parameters():
        tol = 2**-7 if p.dtype == torch.bfloat16 else 2e-6
        torch.testing.assert_close(p.double(), merged[name].double(), rtol=tol, atol=1e-7, msg=name)
    want, got = _logits(ref_model), _logits(got_model)
    if bf16:  # weights may differ by one bf16 ulp where float32 and float64 sums round apart
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    from megatron.core import dist_checkpointing

    common = dist_checkpointing.load_common_state_dict(str(_iter_dir(tmp_path / "out")))
    assert common["iteration"] == ITERATIONS[dtype][-1] and common["args"].tensor_model_parallel_size == tp
    prov = common[PROVENANCE_KEY]
    assert prov["weights"] == weights and [i["uri"] for i in prov["inputs"]] == [str(p) for p in paths]
    # written before the merge knows what it verified, so it does not claim either way
    assert all("verified" not in i for i in prov["inputs"])
    manifest = json.loads((_iter_dir(tmp_path / "out") / MANIFEST_NAME).read_text())
    assert [i["verified"] for i in manifest["inputs"]] == [False] * len(paths)  # files outside the store


def test_safetensors_output_of_megatron_inputs_loads_through_the_trainer_names(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The safetensors merge keeps Megatron's stacked names; the trainer's one mapping of them
    (``from_dist_names``) gives a GPTModel state_dict with the logits of the torch_dist merge."""
    from trainer.weights import from_dist_names

    paths = _inputs(_run(request, 2), "fp32")
    execute_merge(plan_merge(paths, WEIGHTS["fp32"]), tmp_path / "st")
    execute_merge(plan_merge(paths, WEIGHTS["fp32"], out_format="torch_dist"), tmp_path / "dcp")
    tensors = load_file(str(tmp_path / "st" / "model.safetensors"))
    assert "decoder.layers.self_attention.linear_proj.weight" in tensors  # TP=2 split along dim 2
    model = _gpt(False, seed=5)
    missing, unexpected = model.load_state_dict(from_dist_names(tensors), strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing)
    via_megatron = _megatron_load(_gpt(False, seed=6), _iter_dir(tmp_path / "dcp"))
    torch.testing.assert_close(_logits(model), _logits(via_megatron), rtol=0, atol=0)


# --- the copy policy on plain DCP -------------------------------------------------------------------


def _plain_dcp(tmp_path: Path, n: int) -> list[Path]:
    """torch DCP checkpoints with a float weight, differing int ids and a byte item each."""
    from torch.distributed.checkpoint.state_dict_saver import save

    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        state = {
            "w": torch.randn(40, 24, generator=g),
            "ids": torch.arange(10) + 100 * i,
            "blob": io.BytesIO(f"state of checkpoint {i}".encode()),
        }
        path = tmp_path / f"ck{i}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            save(state, checkpoint_id=str(path), no_dist=True)
        paths.append(path)
    return paths


def test_non_float_tensors_and_byte_items_come_from_the_newest(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.state_dict_loader import load

    paths = _plain_dcp(tmp_path, 3)
    plan = plan_merge(paths, [0.2, 0.3, 0.5], out_format="torch_dist")
    execute_merge(plan, tmp_path / "out")
    out = tmp_path / "out" / "release"  # no iteration to name the directory after
    assert (tmp_path / "out" / "latest_checkpointed_iteration.txt").read_text() == "release"
    ids = torch.empty(10, dtype=torch.int64)
    state: dict[str, Any] = {"w": torch.empty(40, 24), "ids": ids, "blob": io.BytesIO()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load(state, checkpoint_id=str(out), no_dist=True)
    assert torch.equal(ids, torch.arange(10) + 200)
    loaded_blob = state["blob"]  # DCP's loader puts a new BytesIO in place
    assert isinstance(loaded_blob, io.BytesIO) and loaded_blob.getvalue() == b"state of checkpoint 2"
    # safetensors has no place for byte items: they are dropped, and the manifest says so
    plan = plan_merge(paths, [0.2, 0.3, 0.5])
    execute_merge(plan, tmp_path / "st")
    got = load_file(str(tmp_path / "st" / "model.safetensors"))
    assert set(got) == {"w", "ids"} and torch.equal(got["ids"], torch.arange(10) + 200)
    assert json.loads((tmp_path / "st" / MANIFEST_NAME).read_text())["dropped_items"] == ["blob"]


def test_chunk_order_does_not_matter(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Writers may list the same chunks in another order: the layout is the same, and each
    input's chunk is found by its offsets."""
    paths = _inputs(_run(request, 2), "bf16")
    layouts = [open_dcp(str(p)) for p in paths]
    shuffled = dataclasses.replace(
        layouts[1],
        tensors={k: dataclasses.replace(t, chunks=t.chunks[::-1]) for k, t in layouts[1].tensors.items()},
    )
    assert any(len(t.chunks) > 1 for t in shuffled.tensors.values())
    for out_format in ("safetensors", "torch_dist"):
        execute_merge(
            plan_merge(layouts, WEIGHTS["bf16"], out_format=out_format), tmp_path / f"a-{out_format}"
        )
        plan = plan_merge([layouts[0], shuffled, layouts[2]], WEIGHTS["bf16"], out_format=out_format)
        execute_merge(plan, tmp_path / f"b-{out_format}")
        a, b = _tree(tmp_path / f"a-{out_format}"), _tree(tmp_path / f"b-{out_format}")
        assert a == b


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the manifests (they hold timings)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


# --- what fails, before any output byte is written -------------------------------------------------------


def _nothing_left(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert [p for p in os.listdir(out.parent) if p.startswith(".")] == []  # no staging left


def test_mismatched_layout_is_named(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tp1, tp2 = _inputs(_run(request, 1), "bf16"), _inputs(_run(request, 2), "bf16")
    with pytest.raises(MismatchError, match=r"tensor '[^']+' is stored in chunks .*, but .* in .*tp1"):
        plan_merge([tp1[0], tp2[1]], [0.5, 0.5], out_format="torch_dist")
    fp32 = _inputs(_run(request, 1), "fp32")
    with pytest.raises(MismatchError, match=r"has dtype F32, but BF16 in"):
        plan_merge([tp1[0], fp32[1]], [0.5, 0.5])


def _copy_inputs(request: pytest.FixtureRequest, tmp_path: Path) -> list[Path]:
    return [Path(shutil.copytree(p, tmp_path / "in" / p.name)) for p in _inputs(_run(request, 2), "bf16")]


def test_truncated_distcp_before_and_after_planning(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    paths = _copy_inputs(request, tmp_path)
    victim = paths[1] / "__1_0.distcp"
    plan = plan_merge(paths, WEIGHTS["bf16"], out_format="torch_dist")
    os.truncate(victim, victim.stat().st_size - 100)  # after planning: only a record's zip tail
    out = tmp_path / "out"
    with pytest.raises(
        CorruptFileError,
        match=r"__1_0\.distcp: truncated or replaced since the merge was planned \(\d+ bytes, \d+ planned\)",
    ):
        execute_merge(plan, out)
    _nothing_left(tmp_path, out)
    with pytest.raises(CorruptFileError, match=r"__1_0\.distcp: truncated: record '.+' needs bytes up to"):
        plan_merge(paths, WEIGHTS["bf16"], out_format="torch_dist")


def test_missing_shard(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    paths = _copy_inputs(request, tmp_path)
    (paths[2] / "__0_1.distcp").unlink()
    with pytest.raises(CorruptFileError, match=r"__0_1\.distcp: missing \(it holds record '.+'\)"):
        plan_merge(paths, WEIGHTS["bf16"], out_format="torch_dist")


def test_record_that_is_not_a_tensor(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import pickle

    from torch.distributed.checkpoint.filesystem import FileSystemReader

    paths = _copy_inputs(request, tmp_path)
    md = FileSystemReader(str(paths[0])).read_metadata()
    target = next(i for i in md.storage_data if i.fqn == "decoder.final_layernorm.weight")
    item = next(info for i, info in md.storage_data.items() if i.fqn.startswith("rng_state"))
    md.storage_data[target] = dataclasses.replace(
        md.storage_data[target], relative_path=item.relative_path, offset=item.offset, length=item.length
    )
    with open(paths[0] / ".metadata", "wb") as f:
        pickle.dump(md, f)
    with pytest.raises(
        CorruptFileError, match=r"record 'decoder\.final_layernorm\.weight' at \d+: record holds a list"
    ):
        plan_merge(paths, WEIGHTS["bf16"], out_format="torch_dist")


# --- split merges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_format", ["safetensors", "torch_dist"])
def test_parts_write_data_and_the_final_step_only_metadata(
    request: pytest.FixtureRequest, tmp_path: Path, out_format: str
) -> None:
    paths = _inputs(_run(request, 2), "bf16")
    plan = plan_merge(paths, WEIGHTS["bf16"], out_format=out_format)
    parts = plan.split(3)
    assert len(parts) == 3 and all(p.plan is parts[0].plan for p in parts)
    assert sum(p.bytes_to_read for p in parts) == plan.bytes_to_read
    out = tmp_path / "parts"
    stats = []
    for p in parts:  # each through JSON, as a task queue ships it
        shipped = MergePlan.from_dict(json.loads(json.dumps(p.plan.to_dict())))
        stats.append(merge_part(type(p)(shipped, p.index, p.shard_indices), str(out)))
    data = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns, f.stat().st_size) for f in out.iterdir()}
    assert sorted(data) == sorted(s.filename for s in parts[0].plan.shards)
    total = MergeStats.combine(stats)
    finalize_sharded(parts[0].plan, str(out), stats, manifest=build_manifest(parts[0].plan, total))
    after = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns, f.stat().st_size) for f in out.iterdir()}
    assert {k: after[k] for k in data} == data  # data files untouched by the final step
    metadata = {
        "safetensors": {"model.safetensors.index.json"},
        "torch_dist": {".metadata", "common.pt", "metadata.json"},
    }
    assert set(after) - set(data) == metadata[out_format] | {MANIFEST_NAME}
    # the same bytes as the whole plan in one process
    execute_merge(parts[0].plan, tmp_path / "single")
    single = tmp_path / "single"
    single = _iter_dir(single) if out_format == "torch_dist" else single
    assert _tree(out) == _tree(single)


# --- the command line -----------------------------------------------------------------------------------


def test_cli_out_format_torch_dist(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from wsm.cli import main

    a, b, _ = _inputs(_run(request, 1), "bf16")
    out = tmp_path / "out"
    assert (
        main(
            ["merge", f"{a}:0.25", f"{b}:0.75", "--out-format", "torch_dist", "-o", str(out), "--no-progress"]
        )
        == 0
    )
    layout = open_dcp(str(out / "iter_0000200"))
    assert layout.metadata["iteration"] == 200
    with pytest.raises(MergeError, match="output format 'zarr' is not one of safetensors, torch_dist"):
        plan_merge([a, b], [0.5, 0.5], out_format="zarr")
