"""The built-in lm-eval task pack and the stage's helpers, without a model: deterministic, loadable by
lm-eval's TaskManager, hashed by content; lm-eval's results flattened into metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer import bench
from trainer.bench_pack import PACK_TAG, materialise, pack_contents
from wsm.eval_config import BenchConfig

TASKS = {"wsm_copy", "wsm_add", "wsm_count", "wsm_stdlib_doc"}


def test_pack_is_a_pure_function_of_seed_and_size(tmp_path: Path) -> None:
    a_dir, a_sha = materialise(7, 30, tmp_path / "a")
    b_dir, b_sha = materialise(7, 30, tmp_path / "b")
    assert a_sha == b_sha and a_dir.name == b_dir.name
    for f in a_dir.glob("*.jsonl"):
        assert f.read_bytes() == (b_dir / f.name).read_bytes()
    assert materialise(7, 30, tmp_path / "a") == (a_dir, a_sha)  # written once, then reused
    assert materialise(8, 30, tmp_path / "a")[1] != a_sha
    assert materialise(7, 31, tmp_path / "a")[1] != a_sha


def test_pack_items_are_distinct_and_well_formed() -> None:
    contents = pack_contents(0, 40)
    assert set(contents) == TASKS
    for task, (config, records) in contents.items():
        assert config["tag"] == PACK_TAG
        assert len(records) == 40, task
        assert len({r["question"] for r in records}) == 40, task
        if config["output_type"] == "multiple_choice":
            assert all(0 <= r["label"] < len(r["choices"]) for r in records), task
        else:
            assert all(r["answer"] and r["answer"] == r["answer"].strip() for r in records), task
    counts = contents["wsm_count"][1]
    for r in counts:
        target, letters = r["question"].split(" occur in: ")
        assert letters.rstrip("?").split().count(target[-1]) == r["label"]


def test_lm_eval_finds_the_pack(tmp_path: Path) -> None:
    pack_dir, _ = materialise(0, 5, tmp_path)
    manager = bench.task_manager(["wsm_pack"], [pack_dir])
    assert TASKS | {PACK_TAG} <= set(manager.all_tasks)
    written = yaml.safe_load((pack_dir / "wsm_add.yaml").read_text())
    assert Path(written["dataset_kwargs"]["data_files"]["test"]).is_file()


def test_include_hash_covers_yaml_and_the_data_it_names(tmp_path: Path) -> None:
    tasks, elsewhere = tmp_path / "tasks", tmp_path / "data"
    tasks.mkdir()
    elsewhere.mkdir()
    data = elsewhere / "items.jsonl"
    data.write_text(json.dumps({"q": 1}) + "\n")
    (tasks / "t.yaml").write_text(
        "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) + "\n"
        "process_docs: !function utils.process\n"
    )
    first = bench.include_sha256([tasks])
    assert first and bench.include_sha256([]) is None
    data.write_text(json.dumps({"q": 2}) + "\n")
    second = bench.include_sha256([tasks])
    assert second != first
    (tasks / "t.yaml").write_text((tasks / "t.yaml").read_text() + "metadata: {version: 2}\n")
    assert bench.include_sha256([tasks]) not in (first, second)


def test_missing_include_path_is_one_line(tmp_path: Path) -> None:
    cfg = BenchConfig(include_path=[str(tmp_path / "nope")])
    with pytest.raises(bench.BenchError, match=r"bench.include_path: .*nope is not a directory"):
        bench.include_dirs(cfg)


def test_flatten_names_metrics_and_skips_what_is_not_a_number() -> None:
    results: dict[str, dict[str, Any]] = {
        "t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 4},
        "g": {"exact_match,strict-match": 1.0, "exact_match_stderr,strict-match": "N/A"},
        "n": {"acc,none": float("nan")},
    }
    assert bench.flatten(results) == {
        "bench/t/acc": 0.5,
        "bench/t/acc_stderr": 0.1,
        "bench/g/exact_match_strict-match": 1.0,
    }


def test_offline_sets_and_restores_the_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    for name in bench.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with bench.offline():
        assert all(os.environ[n] == "1" for n in bench.OFFLINE_ENV)
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True
        assert datasets.config.HF_DATASETS_OFFLINE is True
    assert not any(n in os.environ for n in bench.OFFLINE_ENV)
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False
