"""Bring your own run through the API: POST /runs registers a Megatron-LM run, POST /anneal anneals it.

The job runs in-process (anneal/runner.py driven as tests/anneal/test_pipeline.py does), so the
whole road is covered in seconds: registration, listings, selection, the merge reading the DCP
checkpoints where they lie (a directory, or the moto S3 server with ranged reads only), and the
published model against a float64 reference made by torch's own DCP loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

from anneal import runner
from api.app import create_app
from merger.external import source_options
from merger.formats.dcp import open_dcp
from merger.formats.sources import get_fs
from tests import external_run
from tests.anneal.test_pipeline import BROKER, InProcess
from tests.api.conftest import FakeEnqueuer, published
from tests.conftest import make_settings
from wsm.settings import Settings
from wsm.store import Store

T = external_run.TOKENS_PER_ITERATION
TOKEN = "external-runs-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def megatron_run() -> Path:
    return external_run.megatron_run()


def _app(settings: Settings, store: Store) -> tuple[TestClient, FakeEnqueuer]:
    enqueuer = FakeEnqueuer()
    return TestClient(create_app(settings, store=store, enqueuer=enqueuer)), enqueuer


def _settings(tmp_path: Path, **fields: Any) -> Settings:
    return make_settings(
        store_url=str(tmp_path / "store"),
        state_dir=str(tmp_path / "state"),
        api_token=TOKEN,
        api_broker_retry_s=0,
        external_sync_ttl_s=0,
        **fields,
    )


def _anneal(
    client: TestClient, enqueuer: FakeEnqueuer, store: Store, settings: Settings, body: dict[str, Any]
) -> Any:
    """POST /anneal, then run the job the broker would have carried, in this process."""
    answer = client.post("/anneal", json=body, headers=AUTH)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert published(client, enqueuer)[-1] == (job["run"], job["job_id"])
    external_run.require_megatron_merge()
    outcome = runner.anneal(
        store, settings, BROKER, job["run"], job["job_id"], InProcess(store, settings).dispatch()
    )
    assert outcome == "done"
    done = client.get(f"/anneal/{job['job_id']}").json()
    assert done["state"] == "done" and done["model_id"] == f"{job['run']}:{job['model_name']}"
    return done


def _check_merged(store: Store, run: str, model_name: str, source: Path) -> None:
    """The published model equals sum c_j x_j in float64 (rounded once), x_j by torch DCP's own loader."""
    model = store.get_model(run, model_name)
    merged = load_safetensors(store.read_file(model, "model.safetensors"))
    like = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in merged.items()}
    assert (
        "decoder.layers.mlp.linear_fc1.weight" in merged
        and merged["embedding.word_embeddings.weight"].dtype == torch.bfloat16
    )
    ref = torch.zeros(0)
    for name, got in merged.items():
        ref = sum(
            s.c
            * external_run.raw_tensors(source / f"iter_{s.tokens // T:07d}", {name: like[name]})[
                name
            ].double()
            for s in model.sources
        )
        torch.testing.assert_close(got, ref.to(got.dtype), rtol=2**-7, atol=1e-6)
    assert ref.numel()


def test_register_and_anneal_a_megatron_run(megatron_run: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = Store(settings.store_url, settings=settings)
    client, enqueuer = _app(settings, store)
    source = external_run.copy_run(tmp_path / "run", (10, 20, 30))
    body = {"run": "ext", "source": str(source)}
    assert client.post("/runs", json=body).status_code == 401  # token-protected like POST /anneal
    answer = client.post("/runs", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.text
    out = answer.json()
    assert out["sync"] == {"added": [10 * T, 20 * T, 30 * T], "removed": [], "errors": [], "checkpoints": 3}
    assert out["run"]["source"]["layout"] == "megatron" and out["run"]["source"]["tokenizer"] is False
    assert str(tmp_path) not in answer.text  # server paths are redacted
    listed = client.get("/runs").json()["runs"]
    assert [(r["run"], r["checkpoints"], r["latest_tokens"]) for r in listed] == [("ext", 3, 30 * T)]
    ckpts = client.get("/runs/ext/checkpoints").json()["checkpoints"]
    sizes = sum(p.stat().st_size for p in (source / "iter_0000010").iterdir())
    assert ckpts[0]["bytes"] == sizes and len(ckpts[0]["sha256"]) == 64

    # Evaluation needs a tokenizer: refused before anything is queued.
    refused = client.post("/anneal", json={"run": "ext", "window": str(30 * T)}, headers=AUTH)
    assert refused.status_code == 422 and refused.json()["error"] == "not_evaluable"

    # A checkpoint written since registration is found by POST /anneal itself (TTL 0 here).
    external_run.add_iteration(source, 40)
    seen = client.post("/anneal", json={"run": "ext", "window": str(30 * T), "evaluate": False}, headers=AUTH)
    assert [c["tokens"] for c in seen.json()["selection"]["checkpoints"]] == [20 * T, 30 * T, 40 * T]
    done = _anneal(
        client, enqueuer, store, settings, {"run": "ext", "window": str(30 * T), "evaluate": False}
    )
    assert [c["tokens"] for c in done["selection"]["checkpoints"]] == [20 * T, 30 * T, 40 * T]
    assert [m["id"] for m in client.get("/runs/ext/models").json()["models"]] == [done["model_id"]]
    _check_merged(store, "ext", done["model_name"], source)
    # Nothing of the run was copied into the store: manifests and the annealed model only.
    names = {p.name for p in (tmp_path / "store" / "runs" / "ext").rglob("*") if p.is_file()}
    assert not any(n.endswith((".distcp", ".pt")) or n == ".metadata" for n in names)


def test_registration_errors_are_clear_4xx(megatron_run: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = Store(settings.store_url, settings=settings)
    client, _ = _app(settings, store)
    source = external_run.copy_run(tmp_path / "run", (10,))
    titan = external_run.dcp_fixtures.cached("torchtitan", external_run.dcp_fixtures.torchtitan_run)

    def post(**body: Any) -> Any:
        return client.post("/runs", json={"run": "ext", "source": str(source), **body}, headers=AUTH)

    bad_layout = post(layout="nemo")
    assert bad_layout.status_code == 422 and "layout" in bad_layout.json()["detail"]
    assert post(tokens_per_step=0).status_code == 422
    no_tokens = client.post("/runs", json={"run": "t", "source": str(titan)}, headers=AUTH)
    assert no_tokens.status_code == 422 and no_tokens.json()["error"] == "invalid_source"
    assert "tokens_per_step" in no_tokens.json()["detail"]
    missing = post(source=str(tmp_path / "nowhere"))
    assert missing.status_code == 422 and "no such directory" in missing.json()["detail"]
    assert client.post("/runs", json={"run": "../x", "source": str(source)}, headers=AUTH).status_code == 400
    assert post().status_code == 201
    again = post()
    assert again.status_code == 409 and again.json()["error"] == "run_exists"
    assert client.post("/runs/ext/sync", headers=AUTH).json()["sync"]["added"] == []


class _Reads:
    """Every read of one s3fs instance: ranged reads recorded; whole-object downloads fail the test."""

    def __init__(self, fs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cats: list[tuple[str, int | None, int | None]] = []
        original = fs.cat_file

        def cat_file(path: str, start: Any = None, end: Any = None, **kw: Any) -> Any:
            self.cats.append((path, start, end))
            return original(path, start=start, end=end, **kw)

        def forbidden(*a: Any, **kw: Any) -> Any:
            raise AssertionError(f"unexpected whole-object access {a}")

        monkeypatch.setattr(fs, "cat_file", cat_file)
        for name in ("open", "get", "get_file", "cat"):
            monkeypatch.setattr(fs, name, forbidden)


@pytest.mark.s3
def test_s3_run_is_annealed_with_ranged_reads_only(
    megatron_run: Path, s3_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = s3_settings.model_copy(
        update={
            "api_token": TOKEN,
            "api_broker_retry_s": 0,
            "external_sync_ttl_s": 0,
            "state_dir": str(tmp_path),
        }
    )
    external_run.require_megatron_merge()
    store = Store(settings.store_url, settings=settings)
    uri = settings.store_url.rsplit("/", 1)[0] + "/team/llama"
    fs, path = get_fs(uri, source_options(settings, uri))
    fs.put(str(megatron_run), path, recursive=True)
    reads = _Reads(fs, monkeypatch)
    client, enqueuer = _app(settings, store)
    answer = client.post("/runs", json={"run": "ext", "source": uri}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    assert answer.json()["run"]["source"]["uri"] == uri
    done = _anneal(
        client, enqueuer, store, settings, {"run": "ext", "window": str(30 * T), "evaluate": False}
    )
    _check_merged(store, "ext", done["model_name"], megatron_run)

    distcp = [(p, s, e) for p, s, e in reads.cats if p.endswith(".distcp")]
    assert distcp and all(s is not None and e is not None for _, s, e in distcp)
    assert {p.rsplit("/", 1)[-1] for p, _, _ in reads.cats if not p.endswith(".distcp")} <= {
        ".metadata",
        "common.pt",
        "metadata.json",
    }
    # Bytes fetched against bytes needed: the merged tensors' data plus ~1.6 kB per record to locate it.
    layouts = [
        open_dcp(str(megatron_run / f"iter_{c['tokens'] // T:07d}")) for c in done["selection"]["checkpoints"]
    ]
    needed = sum(x.nbytes for x in layouts)
    records = sum(len(t.chunks) for x in layouts for t in x.tensors.values())
    fetched = sum(int(e) - int(s) for _, s, e in distcp)
    assert needed <= fetched <= needed + records * 3072, (fetched, needed, records)
