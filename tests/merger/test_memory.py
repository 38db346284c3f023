"""Peak memory does not grow with the number of checkpoints (measured in fresh subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

TENSORS = 64
ELEMS = 100_000  # 64 x 200 KB bf16 = 12.8 MB per checkpoint

SCRIPT = """
import json, sys
from merger import execute_merge, plan_merge
from merger.stats import anon_rss
out_format, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
plan = plan_merge(paths, [1 / len(paths)] * len(paths), out_format=out_format)
before = anon_rss()  # after planning: its imports (torch.distributed for DCP) are not the merge's
stats = execute_merge(plan, out, fsync=False)
print(json.dumps({"before": before, "peak": stats.peak_anon_rss, "read": stats.bytes_read}))
"""


def _checkpoints(tmp_path: Path, n: int, fmt: str = "safetensors") -> list[str]:
    """``n`` checkpoints of 64 bf16 tensors: safetensors files, or DCP directories saved by torch."""
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        # bit patterns of finite, normal bf16 values: far cheaper than randn
        bits = torch.randint(0, 1 << 16, (TENSORS, ELEMS), dtype=torch.int32, generator=g)
        vals = ((bits & 0x807F) | ((118 + (bits >> 8) % 9) << 7)).to(torch.int16).view(torch.bfloat16)
        state = {f"layers.{j}.weight": vals[j] for j in range(TENSORS)}
        if fmt == "dcp":
            from torch.distributed.checkpoint.state_dict_saver import save

            path = str(tmp_path / f"step-{i}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                save({k: v.clone() for k, v in state.items()}, checkpoint_id=path, no_dist=True)
        else:
            path = str(tmp_path / f"c{i}.safetensors")
            save_file(state, path)
        paths.append(path)
    return paths


def _peak(paths: list[str], out: Path, out_format: str = "safetensors") -> dict[str, int]:
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, out_format, str(out), *paths],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, int] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def test_peak_anon_rss_does_not_scale_with_checkpoint_count(tmp_path: Path) -> None:
    paths = _checkpoints(tmp_path, 8)
    two = _peak(paths[:2], tmp_path / "o2")
    eight = _peak(paths, tmp_path / "o8")
    growth2 = two["peak"] - two["before"]
    growth8 = eight["peak"] - eight["before"]
    # 8 checkpoints read 4x the bytes of 2 (~100 MB vs ~26 MB); memory must not follow.
    assert eight["read"] == 4 * two["read"]
    assert growth8 < growth2 + 16 * 2**20, (growth2, growth8)
    assert growth8 < eight["read"] / 4, (growth8, eight["read"])


@pytest.fixture(scope="module")
def dcp_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return _checkpoints(tmp_path_factory.mktemp("dcp"), 8, "dcp")


@pytest.mark.parametrize("out_format", ["safetensors", "torch_dist"])
def test_dcp_peak_anon_rss_does_not_scale_with_checkpoint_count(
    dcp_paths: list[str], tmp_path: Path, out_format: str
) -> None:
    """The same for DCP inputs (records located inside .distcp files), into either output format."""
    paths = dcp_paths
    two = _peak(paths[:2], tmp_path / "o2", out_format)
    eight = _peak(paths, tmp_path / "o8", out_format)
    growth2 = two["peak"] - two["before"]
    growth8 = eight["peak"] - eight["before"]
    assert eight["read"] == 4 * two["read"]
    assert growth8 < growth2 + 16 * 2**20, (growth2, growth8)
    assert growth8 < eight["read"] / 4, (growth8, eight["read"])
