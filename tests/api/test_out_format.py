"""``POST /anneal`` with ``out_format``: a torch_dist anneal is its own job and model, and a format the
merger does not write is a 422 naming the ones it does."""

from __future__ import annotations

from fastapi.testclient import TestClient

from anneal import jobs
from wsm.store import Store

BODY = {"curve": "1-sqrt", "window": "40M", "evaluate": False}


def test_out_format_reaches_the_job_spec(client: TestClient, run_store: Store) -> None:
    plain = client.post("/anneal", json=BODY)
    dist = client.post("/anneal", json={**BODY, "out_format": "torch_dist"})
    assert plain.status_code == dist.status_code == 202, dist.text
    assert plain.json()["job_id"] != dist.json()["job_id"]
    spec = jobs.load(run_store, "r1", dist.json()["job_id"]).spec
    assert spec.out_format == "torch_dist"
    assert (
        spec.model_name == jobs.load(run_store, "r1", plain.json()["job_id"]).spec.model_name + "-torch_dist"
    )
    # Saying the default is the same job as not saying it.
    same = client.post("/anneal", json={**BODY, "out_format": "safetensors"})
    assert same.json()["job_id"] == plain.json()["job_id"]


def test_unknown_out_format_is_a_422_naming_the_formats(client: TestClient, run_store: Store) -> None:
    response = client.post("/anneal", json={**BODY, "out_format": "gguf"})
    assert response.status_code == 422
    body = response.json()
    assert "gguf" in body["detail"] and "safetensors, torch_dist" in body["detail"], body
    assert "\n" not in body["detail"]


def test_openapi_lists_the_formats(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["AnnealRequest"]
    assert schema["properties"]["out_format"]["enum"] == ["safetensors", "torch_dist"]


def test_a_torch_dist_model_is_downloadable_file_by_file(
    client: TestClient, run_store: Store, api_settings: object
) -> None:
    from anneal import runner

    job = client.post("/anneal", json={**BODY, "out_format": "torch_dist"}).json()
    dispatch = runner.Dispatch(evaluate=lambda r, j: None, split=lambda *a: None)
    assert runner.anneal(run_store, api_settings, "sqla+sqlite:///x", "r1", job["job_id"], dispatch) == "done"
    model_id = f"r1:{jobs.load(run_store, 'r1', job['job_id']).spec.model_name}"
    assert client.get(f"/models/{model_id}").json()["format"] == "torch_dist"
    listed = client.get(f"/models/{model_id}/weights")
    assert listed.status_code == 400
    choices = listed.json()["choices"]
    assert choices[0] == "latest_checkpointed_iteration.txt" and "release/.metadata" in choices
    model = run_store.get_model("r1", model_id.split(":", 1)[1])
    for name in choices:
        got = client.get(f"/models/{model_id}/weights", params={"file": name})
        assert got.status_code == 200 and got.content == run_store.read_file(model, name), name
        assert got.headers["x-checksum-sha256"] == model.file(name).sha256
