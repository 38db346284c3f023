"""The research endpoints over the seeded dashboard run: merge vs real decay, the frontier, branch
curves, policies and grids (api/routes/research.py, policies.py, grids.py, dashboard.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from anneal import jobs, policies
from api.app import create_app
from tests.api import dashboard_seed as seed
from tests.api.conftest import FakeEnqueuer, published
from tests.conftest import make_settings
from wsm.settings import Settings
from wsm.store import Store

M = seed.M


def _settings(root: Path, **fields: Any) -> Settings:
    fields.setdefault("api_token", None)
    return make_settings(store_url=str(root), state_dir=str(root.parent / f"{root.name}-state"), **fields)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Path]:
    root = tmp_path_factory.mktemp("store")
    store = Store(str(root))
    seed.seed_all(store)
    return store, root


@pytest.fixture()
def fresh(tmp_path: Path) -> tuple[Store, Path]:
    """A seeded store of its own, for tests that write policies, grids and jobs."""
    store = Store(str(tmp_path / "store"))
    seed.seed_all(store)
    return store, tmp_path / "store"


@pytest.fixture()
def client(seeded: tuple[Store, Path]) -> TestClient:
    store, root = seeded
    return TestClient(create_app(_settings(root), store=store, enqueuer=FakeEnqueuer()))


def test_compare_pairs_each_merge_with_its_twin(client: TestClient) -> None:
    out = client.get("/runs/demo/compare").json()
    rows = {r["name"]: r for r in out["rows"]}
    assert set(rows) == {"anneal-1-sqrt-80M-at-200M", "anneal-1-sqrt-40M-at-120M"}
    assert out["unpaired"] == len(seed.VARIANTS) + len(seed.FRONTIER) - 2
    assert out["metrics"][:2] == ["pretrain_val_loss", "sft_val_loss"]

    end = rows["anneal-1-sqrt-80M-at-200M"]
    assert end["decay_models"] == ["demo:baseline-1-sqrt-80M-at-200M"]
    assert (end["window_start"], end["window_end"], end["checkpoints"]) == (120 * M, seed.END, 4)
    loss = end["metrics"]["pretrain_val_loss"]
    decays = seed.TWINS[0][4]
    assert loss["decay"]["n"] == 2 and loss["decay"]["mean"] == pytest.approx(sum(decays) / 2)
    assert loss["decay"]["sd"] == pytest.approx(abs(decays[0] - decays[1]) / 2**0.5)
    wso, merge = (
        seed.EVAL_METRICS["wso"]["pretrain_val_loss"],
        seed.EVAL_METRICS[seed.VARIANTS[0][0]]["pretrain_val_loss"],
    )
    decay = sum(decays) / 2
    assert loss["wso"]["mean"] == wso and loss["merge"]["mean"] == merge
    assert loss["gap_pct"] == pytest.approx(100 * (merge - decay) / decay)
    assert loss["recovered"] == pytest.approx((wso - merge) / (wso - decay))
    assert loss["within_noise"] is False and loss["noise_from"] == "seeds"

    # At 120M the WSO -> decay difference is within the spread of the neighbouring checkpoints.
    early = rows["anneal-1-sqrt-40M-at-120M"]["metrics"]["pretrain_val_loss"]
    assert early["within_noise"] is True and early["noise_from"] == "checkpoints"


def test_frontier_has_the_policy_series_and_wso(client: TestClient) -> None:
    out = client.get("/runs/demo/frontier").json()
    series = {s["key"]: s for s in out["series"]}
    policy = series[f"anneal|1-sqrt|{40 * M}|{20 * M}"]
    assert [p["tokens"] for p in policy["points"]] == seed.FRONTIER_ENDS
    at_120 = policy["points"][1]["metrics"]["pretrain_val_loss"]["mean"]
    assert at_120 == pytest.approx(seed.val_loss(120 * M) - seed.FRONTIER_GAIN[120 * M])
    assert [p["tokens"] for p in out["trainer"]] == seed.CHECKPOINTS  # the trainer's validation loss
    assert [p["tokens"] for p in out["wso"]] == seed.WSO_EVALUATED  # evaluated: kept apart
    assert {p["metrics"]["pretrain_val_loss"]["source"] for p in out["wso"]} == {"eval"}
    assert {p["metrics"]["pretrain_val_loss"]["source"] for p in out["trainer"]} == {"trainer"}
    assert {s["kind"] for s in out["series"]} == {"anneal", "decay"}
    assert client.get("/runs/nope/frontier").status_code == 404


def test_branches_start_at_their_fork(client: TestClient) -> None:
    branches = {b["model_id"]: b for b in client.get("/runs/demo/branches").json()["branches"]}
    assert len(branches) == 1 + len(seed.TWINS)
    cosine = branches[f"demo:{seed.BASELINE}"]
    steps = 80 * M // seed.TOKENS_PER_STEP
    assert cosine["fork_tokens"] == 120 * M and cosine["curve"] == "cosine"
    points = cosine["points"]
    assert points[0]["tokens"] == 120 * M + seed.TOKENS_PER_STEP and points[-1]["tokens"] == seed.END
    assert len(points) == steps and all(p["loss"] is not None and p["lr"] is not None for p in points)
    assert points[0]["lr"] == pytest.approx(seed.PEAK_LR, rel=0.01) and points[-1]["lr"] == 0
    few = client.get("/runs/demo/branches", params={"points": 10}).json()["branches"]
    assert all(len(b["points"]) <= 40 for b in few)  # losses are kept, the LR steps thinned


def test_policy_lifecycle(fresh: tuple[Store, Path]) -> None:
    store, root = fresh
    enqueuer = FakeEnqueuer()
    settings = _settings(root)
    client = TestClient(create_app(settings, store=store, enqueuer=enqueuer))
    body = {"run": "demo", "curve": "1-sqrt", "window": "40M", "every": "60M", "evaluate": False}
    created = client.post("/policies", json=body)
    assert created.status_code == 201, created.text
    policy = created.json()
    assert policy["created"] is True and policy["every"] == 60 * M and policy["next_point"] == 240 * M
    assert [(p["tokens"], p["window_end"], p["state"]) for p in policy["points"]] == [
        (60 * M, 60 * M, "waiting"),
        (120 * M, 120 * M, "waiting"),
        (180 * M, 180 * M, "waiting"),
    ]
    again = client.post("/policies", json=body)
    assert again.status_code == 200 and again.json()["policy_id"] == policy["policy_id"]

    # A worker's sweep creates the jobs; the API then shows their states and the job ids it promised.
    policies.sweep(store, settings, enqueuer.enqueue)
    shown = client.get(f"/policies/{policy['policy_id']}").json()
    assert {p["state"] for p in shown["points"]} == {"queued"}
    assert [p["job_id"] for p in shown["points"]] == [p["job_id"] for p in policy["points"]]
    assert {j for _, j in enqueuer.sent} == {p["job_id"] for p in policy["points"]}
    listed = client.get("/policies", params={"run": "demo"}).json()["policies"]
    assert [p["policy_id"] for p in listed] == [policy["policy_id"]]

    assert client.delete(f"/policies/{policy['policy_id']}").status_code == 204
    assert client.get(f"/policies/{policy['policy_id']}").status_code == 404
    assert client.delete(f"/policies/{policy['policy_id']}").status_code == 404
    assert len(jobs.list_jobs(store, "demo")) == 3  # its jobs run on


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"window": "40M", "every": "0"}, 422, "every"),
        ({"window": "4x", "every": "40M"}, 422, "window"),
        ({"window": "40M", "every": "40M", "curve": "wiggly"}, 422, "curve"),
        ({"window": "40M", "every": "40M", "run": "nope"}, 404, "nope"),
    ],
)
def test_policy_request_errors(client: TestClient, body: dict[str, Any], status: int, words: str) -> None:
    res = client.post("/policies", json=body)
    assert res.status_code == status and words in res.json()["detail"].lower()


def test_mutations_need_the_token(seeded: tuple[Store, Path]) -> None:
    store, root = seeded
    client = TestClient(create_app(_settings(root, api_token="s3cret"), store=store, enqueuer=FakeEnqueuer()))
    assert client.post("/policies", json={"window": "40M", "every": "40M"}).status_code == 401
    assert client.delete("/policies/policy-0123").status_code == 401
    assert client.post("/grids", json={"curves": ["linear"], "windows": ["40M"]}).status_code == 401
    assert client.get("/policies").status_code == 200 and client.get("/grids").status_code == 200


def test_grid_submits_idempotent_jobs(fresh: tuple[Store, Path]) -> None:
    store, root = fresh
    enqueuer = FakeEnqueuer()
    client = TestClient(create_app(_settings(root), store=store, enqueuer=enqueuer))
    body = {
        "run": "demo",
        "curves": ["1-sqrt", "linear"],
        "windows": ["40M", "80M", "900M"],
        "intervals": ["20M"],
    }
    res = client.post("/grids", json=body)
    assert res.status_code == 202, res.text
    grid = res.json()
    assert grid["created"] is True and grid["end"] == seed.END and len(grid["cells"]) == 6
    skipped = [c for c in grid["cells"] if c["state"] == "skipped"]
    assert [c["window"] for c in skipped] == [900 * M, 900 * M] and "longer than the run" in skipped[0][
        "error"
    ]
    queued = [c for c in grid["cells"] if c["state"] == "queued"]
    assert len(queued) == 4 and [c["checkpoints"] for c in queued] == [2, 4, 2, 4]
    assert sorted(j for _, j in published(client, enqueuer)) == sorted(c["job_id"] for c in queued)

    again = client.post("/grids", json=body)
    assert again.status_code == 200 and again.json()["grid_id"] == grid["grid_id"]
    assert len(published(client, enqueuer)) == 4  # the same jobs: nothing sent twice
    assert client.get(f"/grids/{grid['grid_id']}").json()["cells"] == again.json()["cells"]
    assert [g["grid_id"] for g in client.get("/grids", params={"run": "demo"}).json()["grids"]] == [
        grid["grid_id"]
    ]
    assert client.get("/grids/grid-0000").status_code == 404

    big = {"run": "demo", "curves": ["1-sqrt"] * 16, "windows": ["40M"] * 32, "intervals": ["20M"] * 2}
    too_big = client.post("/grids", json=big)
    assert too_big.status_code == 422 and "at most" in too_big.json()["detail"]


def test_job_phases_name_only_what_runs(fresh: tuple[Store, Path]) -> None:
    store, root = fresh
    client = TestClient(create_app(_settings(root), store=store, enqueuer=FakeEnqueuer()))
    plain = client.post("/anneal", json={"run": "demo", "window": "40M", "evaluate": False}).json()
    assert plain["phases"] == ["queued", "resolving", "merging", "done"]
    evaluated = client.post("/anneal", json={"run": "demo", "window": "60M"}).json()
    assert "evaluating_anneal" in evaluated["phases"] and "publishing" not in evaluated["phases"]
