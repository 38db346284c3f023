"""``wsm merge``: explicit files, --dry-run, --mergekit-yaml, --run from the store, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from merger_helpers import load_output, random_state, save
from safetensors.torch import save as st_save

from merger.store_io import select
from theory import CurveSpec
from wsm.cli import main


def _inputs(tmp_path: Path) -> list[str]:
    return [save(tmp_path / f"c{i}.safetensors", random_state(i)) for i in range(3)]


def test_explicit_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = _inputs(tmp_path)
    out = tmp_path / "out"
    code = main(["merge", f"{a}:0.5", f"{b}:0.3", f"{c}:0.2", "-o", str(out), "--no-progress", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["stats"]["bytes_read"] == payload["plan"]["bytes_to_read"]
    assert set(load_output(out)) == set(random_state(0))
    manifest = json.loads((out / "merge_manifest.json").read_text())
    assert [i["c"] for i in manifest["inputs"]] == [0.5, 0.3, 0.2]
    assert all(len(i["sha256"]) == 64 for i in manifest["inputs"])  # hashed by default


def test_sharded_output_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _inputs(tmp_path)
    out = tmp_path / "out"
    assert (
        main(
            [
                "merge",
                *paths,
                "-o",
                str(out),
                "--max-shard-size",
                "40kB",
                "--dtype",
                "float32",
                "--no-progress",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "0.333333" in text and "merged in" in text
    assert (out / "model.safetensors.index.json").exists()


def test_dry_run_prints_plan_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, _ = _inputs(tmp_path)
    assert main(["merge", f"{a}:0.25", f"{b}:0.75", "-o", str(tmp_path / "out"), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [c["c"] for c in plan["checkpoints"]] == [0.25, 0.75]
    assert plan["bytes_to_read"] > 0
    assert not (tmp_path / "out").exists()


def test_mergekit_yaml(tmp_path: Path) -> None:
    dirs = []
    for i in range(2):
        (tmp_path / f"m{i}").mkdir()
        (tmp_path / f"m{i}" / "config.json").write_text("{}")  # what makes it a model directory for mergekit
        dirs.append(save(tmp_path / f"m{i}" / "model.safetensors", random_state(i)))
    cfg_path = tmp_path / "merge.yaml"
    assert main(["merge", f"{dirs[0]}:0.4", f"{dirs[1]}:0.6", "--mergekit-yaml", str(cfg_path)]) == 0
    cfg = yaml.safe_load(cfg_path.read_text())
    assert cfg["merge_method"] == "linear"
    assert cfg["parameters"] == {"normalize": False}
    assert cfg["models"] == [
        {"model": str(tmp_path / "m0"), "parameters": {"weight": 0.4}},
        {"model": str(tmp_path / "m1"), "parameters": {"weight": 0.6}},
    ]
    assert cfg["out_dtype"] == "bfloat16"


def test_mergekit_yaml_refuses_what_mergekit_cannot_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, _ = _inputs(tmp_path)
    assert main(["merge", f"{a}:0.5", f"{b}:0.5", "--mergekit-yaml", str(tmp_path / "m.yaml")]) == 2
    err = capsys.readouterr().err
    assert "not a Hugging Face model directory (no config.json)" in err and "Traceback" not in err
    assert not (tmp_path / "m.yaml").exists()


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (["0.5", "0.6", "0.2"], "weights sum to 1.3, not 1"),
        (["0.5", "-0.1", "0.6"], "weight 1 is negative"),
        (["0.5", None, "0.5"], "give every input a weight"),
    ],
)
def test_bad_weights_one_line(
    tmp_path: Path, weights: list[str | None], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [p if w is None else f"{p}:{w}" for p, w in zip(_inputs(tmp_path), weights, strict=True)]
    assert main(["merge", *args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_mismatch_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = save(tmp_path / "a.safetensors", random_state(0))
    s = random_state(1)
    del s["scalar"]
    b = save(tmp_path / "b.safetensors", s)
    assert main(["merge", a, b, "-o", str(tmp_path / "out")]) == 2
    assert "b.safetensors: tensor 'scalar'" in capsys.readouterr().err


def test_run_from_local_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsm.store import Store

    url = str(tmp_path / "store")
    store = Store(url)
    for i in range(4):
        with store.publish_checkpoint("r1", (i + 1) * 10**10) as pub:
            pub.write_bytes("model.safetensors", st_save(random_state(i)))
    assert (
        main(
            [
                "merge",
                "--run",
                "r1",
                "--store",
                url,
                "--curve",
                "1-sqrt",
                "--window",
                "30B",
                "--interval",
                "10B",
                "--dry-run",
                "--json",
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert [c["tokens"] for c in plan["checkpoints"]] == [2 * 10**10, 3 * 10**10, 4 * 10**10]
    assert (
        main(
            ["merge", "--run", "r1", "--store", url, "--window", "30B", "--interval", "10B", "--no-progress"]
        )
        == 0
    )
    models = Store(url).list_models("r1")
    # The same name the service gives the same merge (one name for one merge).
    expected = select(Store(url), "r1", CurveSpec("1-sqrt"), "30B", interval="10B").model_name()
    assert [m.name for m in models] == [expected]
    assert expected.startswith("anneal-1-sqrt-w30B-at-40B-n3-")
    assert [s.tokens for s in models[0].sources] == [2 * 10**10, 3 * 10**10, 4 * 10**10]
