"""The lm-evaluation-harness stage end to end: a tiny stored model through the built-in pack and a
user task YAML, offline; scores stored, reused and served by the API."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lm_eval
import pytest
import yaml
from fastapi.testclient import TestClient

from tests.api.conftest import FakeEnqueuer
from tests.conftest import make_settings
from tests.trainer.sft.conftest import TinyRun, fast_eval_config
from trainer import bench
from trainer.evaluate import eval_name, evaluate_model
from trainer.load import resolve
from wsm.store import EvalManifest

PACK_TASKS = ("wsm_copy", "wsm_add", "wsm_count", "wsm_stdlib_doc")
LIMIT = 3


def write_user_task(directory: Path, data: Path) -> None:
    """A multiple-choice task over local JSONL, the way a user adds one (``dataset_path: json``)."""
    colours = ["red", "green", "blue"]
    data.write_text(
        "".join(
            json.dumps({"question": f"Which colour is {c}?", "choices": colours, "label": i}) + "\n"
            for i, c in enumerate(colours * 2)
        )
    )
    task = {
        "task": "my_colours",
        "dataset_path": "json",
        # cache_dir: datasets' Arrow cache beside the task, out of the home directory.
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(directory / ".hf-datasets")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": "choices",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 2},
    }
    (directory / "my_colours.yaml").write_text(yaml.safe_dump(task))


@dataclass
class BenchRun:
    manifest: EvalManifest
    config: Any
    user_data: Path
    offline_env: list[dict[str, str | None]]
    progress: list[tuple[str, float]]


# The published model (runs/tiny/models/untrained), the kind of dir an anneal job evaluates: the trained
# checkpoint keeps exactly one evaluation for test_eval.py, which lists that checkpoint's evaluations.
@pytest.fixture(scope="module")
def bench_run(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchRun]:
    tasks_dir = tmp_path_factory.mktemp("user-tasks")
    write_user_task(tasks_dir, tasks_dir / "colours.jsonl")
    config = fast_eval_config(
        sharpness={"enabled": False},
        run_sft=False,
        pretrain_valid_samples=4,
        bench={
            "enabled": True,
            "tasks": ["wsm_pack", "my_colours"],
            "include_path": [str(tasks_dir)],
            "limit": LIMIT,
            "batch_size": 16,
            "pack_items": 20,
        },
    )
    seen: list[dict[str, str | None]] = []
    real = lm_eval.simple_evaluate

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append({k: os.environ.get(k) for k in bench.OFFLINE_ENV})
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        for name in bench.OFFLINE_ENV:
            mp.setenv(name, "1")
        mp.setattr(lm_eval, "simple_evaluate", spy)
        progress: list[tuple[str, float]] = []
        manifest = evaluate_model(
            tiny_run.store,
            tiny_run.run,
            tiny_run.untrained,
            config,
            progress=lambda p, f: progress.append((p, f)),
        )
        yield BenchRun(manifest, config, tasks_dir / "colours.jsonl", seen, progress)


def test_scores_of_the_pack_and_the_user_task_are_stored(bench_run: BenchRun) -> None:
    m = bench_run.manifest.metrics
    for task in PACK_TASKS:
        metric = "exact_match" if task in ("wsm_copy", "wsm_add") else "acc"
        assert f"bench/{task}/{metric}" in m and f"bench/{task}/{metric}_stderr" in m, sorted(m)
    assert "bench/wsm_count/acc_norm" in m
    assert "bench/my_colours/acc" in m and "bench/my_colours/acc_stderr" in m
    bench_metrics = {k: v for k, v in m.items() if k.startswith("bench/")}
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in bench_metrics.values())
    assert "pretrain_val_loss" in m  # the other stages still ran
    # What was stored is what lm-eval scored, and the offline switches were on while it ran.
    assert bench_run.offline_env == [dict.fromkeys(bench.OFFLINE_ENV, "1")]
    fractions = [f for _, f in bench_run.progress]
    assert fractions == sorted(fractions) and bench_run.progress[-1] == ("bench", 1.0)
    assert ("bench", 1.0) not in bench_run.progress[:-1]


def test_record_names_lm_eval_and_hashes_the_task_configs(bench_run: BenchRun) -> None:
    record = bench_run.manifest.extra["bench"]
    assert record["lm_eval"] == bench.lm_eval_version()
    assert set(record["tasks"]) == {*PACK_TASKS, "my_colours"}
    for task, info in record["tasks"].items():
        assert len(info["config_sha256"]) == 64, task
        assert info["n_samples"]["effective"] == LIMIT, task
    assert record["tasks"]["my_colours"]["version"] == 2
    assert record["include_sha256"] and record["pack_sha256"]
    assert bench_run.manifest.config["bench"]["limit"] == LIMIT
    assert bench_run.manifest.seeds[-1] == bench_run.config.bench.seed


def test_second_run_reuses_the_stored_scores(
    tiny_run: TinyRun, bench_run: BenchRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("recomputed a stored benchmark evaluation")

    monkeypatch.setattr(bench, "run_bench", boom)
    again = evaluate_model(tiny_run.store, tiny_run.run, tiny_run.untrained, bench_run.config)
    assert again.name == bench_run.manifest.name and again.metrics == bench_run.manifest.metrics


def test_cache_key_follows_the_stage_and_the_user_data(tiny_run: TinyRun, bench_run: BenchRun) -> None:
    sm = resolve(tiny_run.store, tiny_run.run, tiny_run.untrained)
    name = eval_name(sm, bench_run.config)
    assert name == bench_run.manifest.name
    off = bench_run.config.model_copy(
        update={"bench": bench_run.config.bench.model_copy(update={"enabled": False})}
    )
    assert eval_name(sm, off) != name
    more = bench_run.config.bench.model_copy(update={"num_fewshot": 1})
    assert eval_name(sm, bench_run.config.model_copy(update={"bench": more})) != name
    original = bench_run.user_data.read_bytes()
    try:
        bench_run.user_data.write_bytes(original.replace(b"red", b"rot"))
        assert eval_name(sm, bench_run.config) != name
    finally:
        bench_run.user_data.write_bytes(original)
    assert eval_name(sm, bench_run.config) == name


def test_api_serves_the_scores(tiny_run: TinyRun, bench_run: BenchRun, tmp_path: Path) -> None:
    from api.app import create_app

    settings = make_settings(
        store_url=tiny_run.store.url, state_dir=str(tmp_path / "state"), api_token=None, api_broker_retry_s=0
    )
    with TestClient(create_app(settings, store=tiny_run.store, enqueuer=FakeEnqueuer())) as client:
        response = client.get(f"/runs/{tiny_run.run}/evals")
    assert response.status_code == 200
    served = {e["name"]: e for e in response.json()["evals"]}
    out = served[bench_run.manifest.name]
    assert out["metrics"] == pytest.approx(bench_run.manifest.metrics)
    assert "bench/wsm_stdlib_doc/acc_stderr" in out["metrics"]
    assert out["config"]["bench"]["tasks"] == ["wsm_pack", "my_colours"]


def test_benchmarks_of_an_hf_dir_are_its_exports(
    tiny_run: TinyRun, bench_run: BenchRun, tmp_path: Path
) -> None:
    """A Hugging Face directory goes through the same stage: exported again with the run's tokenizer,
    it scores exactly what the model it was exported from scored; the API lists its record."""
    from trainer.export import export_hf

    exported = export_hf(tiny_run.store, tiny_run.run, tiny_run.untrained, tmp_path / "hf")
    with pytest.MonkeyPatch.context() as mp:
        for name in bench.OFFLINE_ENV:
            mp.setenv(name, "1")
        record = evaluate_model(tiny_run.store, tiny_run.run, f"hf:{exported}", bench_run.config)
    ours = {k: v for k, v in bench_run.manifest.metrics.items() if k.startswith("bench/")}
    assert {k: v for k, v in record.metrics.items() if k.startswith("bench/")} == pytest.approx(ours)
    assert record.model_id == f"hf:{exported}"
