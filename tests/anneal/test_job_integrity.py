"""Anneal jobs never publish corrupt or non-finite merges: the job fails naming file and range, or tensor.

Driven in-process like tests/anneal/test_pipeline.py; corruption is made behind the store's back
without changing any size, so only the checksums of the manifests can tell.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from anneal import jobs, resolve, runner
from tests.anneal.test_pipeline import BROKER, InProcess
from tests.api.fixtures import M, make_run
from tests.conftest import make_settings
from wsm.settings import Settings
from wsm.store import Store, layout


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        store_url=str(tmp_path / "store"), state_dir=str(tmp_path / "state"), job_heartbeat_s=0.05
    )


@pytest.fixture()
def store(settings: Settings) -> Store:
    s = Store(settings.store_url, settings=settings, checksum_block_size=4096)
    make_run(s, tokens=[i * 10 * M for i in range(1, 5)])
    return s


def _job(store: Store, *, allow_nonfinite: bool = False) -> jobs.JobRecord:
    spec = resolve.resolve(
        store,
        curve=resolve.curve_spec("1-sqrt", alpha=None, floor=0.0),
        request=resolve.window_request("30M", None, None, None),
        evaluate=False,
        allow_nonfinite=allow_nonfinite,
    )
    record = jobs.JobRecord(job_id=spec.job_id(), spec=spec)
    jobs.save(store, record)
    return record


def _run(store: Store, settings: Settings, record: jobs.JobRecord) -> jobs.JobRecord:
    driver = InProcess(store, settings)
    runner.anneal(store, settings, BROKER, record.run, record.job_id, driver.dispatch())
    driver.drain()
    return jobs.load(store, record.run, record.job_id)


def _weights(store: Store, tokens: int) -> str:
    path = store.local_path(f"{layout.checkpoint_dir('r1', tokens)}/{layout.MODEL_FILE}")
    assert path is not None
    return path


@pytest.mark.parametrize("parts", [1, 3])
def test_flipped_byte_fails_the_job_naming_file_and_range(
    store: Store, settings: Settings, parts: int
) -> None:
    if parts > 1:
        settings = settings.model_copy(update={"merge_split_bytes": 1, "merge_parts": parts})
    record = _job(store)
    path = _weights(store, 30 * M)
    with open(path, "r+b") as f:  # the same size: planning sees nothing
        f.seek(os.path.getsize(path) - 5000)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x80]))
    done = _run(store, settings, record)
    assert done.state == "failed", done
    error = done.error or ""
    assert (
        f"{layout.checkpoint_dir('r1', 30 * M)}/{layout.MODEL_FILE} at bytes" in error and "\n" not in error
    )
    assert store.list_models("r1") == [] and not done.model_published


def test_nan_checkpoint_fails_the_job_unless_the_request_allows_it(store: Store, settings: Settings) -> None:
    arrays = load_file(_weights(store, 40 * M))
    arrays["layer2.weight"][1, 2] = np.nan
    store.delete_checkpoint("r1", 40 * M)
    with tempfile.TemporaryDirectory() as tmp:  # a diverged run publishes NaN with valid checksums
        save_file(arrays, os.path.join(tmp, "m.safetensors"))
        with store.publish_checkpoint("r1", 40 * M, step=40) as pub:
            pub.put_file(layout.MODEL_FILE, os.path.join(tmp, "m.safetensors"))
    refused = _run(store, settings, _job(store))
    assert refused.state == "failed" and "'layer2.weight' holds nan" in (refused.error or ""), refused.error
    assert layout.checkpoint_dir("r1", 40 * M) in (refused.error or "")
    assert store.list_models("r1") == []

    allowed = _job(store, allow_nonfinite=True)
    assert allowed.job_id != refused.job_id and allowed.spec.model_name == refused.spec.model_name
    done = _run(store, settings, allowed)
    assert done.state == "done", done.error
    model = store.get_model("r1", done.spec.model_name)
    assert model.config["merge"]["allow_nonfinite"] is True
    assert all(i["verified"] for i in model.config["merge"]["inputs"])


def test_a_clean_split_merge_records_every_input_verified(store: Store, settings: Settings) -> None:
    settings = settings.model_copy(update={"merge_split_bytes": 1, "merge_parts": 3})
    done = _run(store, settings, _job(store))
    assert done.state == "done", done.error
    model = store.get_model("r1", done.spec.model_name)
    assert model.is_sharded and model.config["parts"] == 3
    inputs = model.config["merge"]["inputs"]
    assert len(inputs) == len(done.spec.tokens) and all(i["verified"] for i in inputs)
