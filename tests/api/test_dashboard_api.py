"""What the dashboard relies on: the page and its assets are served, and every endpoint it reads
answers with the fields the page uses (api/static/app.js and js/*.js). The route tests of the API
cover the endpoints' behaviour; these pin the shapes from the page's side.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.dashboard import STATIC_DIR
from api.routes.dashboard import downsample
from tests.api import dashboard_seed as seed
from tests.conftest import make_settings
from wsm.settings import Settings
from wsm.store import Store, layout

# Every endpoint the page calls (OpenAPI paths).
PAGE_ENDPOINTS = {
    ("get", "/healthz"),
    ("get", "/runs"),
    ("get", "/runs/{run}"),
    ("get", "/runs/{run}/metrics/series"),
    ("get", "/runs/{run}/checkpoints"),
    ("get", "/runs/{run}/models"),
    ("get", "/runs/{run}/evals"),
    ("get", "/anneal"),
    ("post", "/anneal"),
    ("get", "/anneal/{job_id}"),
    ("get", "/runs/{run}/branches"),
    ("get", "/runs/{run}/frontier"),
    ("get", "/runs/{run}/compare"),
    ("get", "/policies"),
    ("post", "/policies"),
    ("delete", "/policies/{policy_id}"),
    ("get", "/grids"),
    ("post", "/grids"),
}


class RecordingEnqueuer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def enqueue(self, run: str, job_id: str) -> None:
        self.sent.append((run, job_id))

    def ping(self) -> str:
        return "recording enqueuer"


def _settings(root: Path, **fields: Any) -> Settings:
    fields.setdefault("api_token", None)  # independent of a WSM_API_TOKEN in the environment
    return make_settings(store_url=str(root), state_dir=str(root.parent / f"{root.name}-state"), **fields)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, seed.Seeded, Path]:
    root = tmp_path_factory.mktemp("store")
    store = Store(str(root))
    return store, seed.seed_all(store), root


@pytest.fixture()
def client(seeded: tuple[Store, seed.Seeded, Path]) -> TestClient:
    store, _, root = seeded
    return TestClient(create_app(_settings(root), store=store, enqueuer=RecordingEnqueuer()))


def test_page_and_assets_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    for src in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        asset = client.get(f"/{src}")
        assert asset.status_code == 200, src
        assert asset.headers["cache-control"] == "no-cache"
    app_js = client.get("/static/app.js")
    assert "javascript" in app_js.headers["content-type"]  # module scripts need a JS MIME type
    assert "text/css" in client.get("/static/style.css").headers["content-type"]
    for module in re.findall(r'from "\./js/([a-z]+\.js)"', app_js.text):
        assert client.get(f"/static/js/{module}").status_code == 200, module
    assert "/" not in client.app.openapi()["paths"]  # the page is not part of the API schema


def test_page_works_offline() -> None:
    """No CDN: the page and its scripts only reference relative URLs; Chart.js ships with its license."""
    assert (STATIC_DIR / "vendor" / "chart.umd.min.js").stat().st_size > 100_000
    assert "MIT" in (STATIC_DIR / "vendor" / "chart.js-LICENSE.md").read_text()
    for path in [STATIC_DIR / "index.html", STATIC_DIR / "style.css", *STATIC_DIR.glob("**/*.js")]:
        if "vendor" in path.parts:
            continue
        text = path.read_text()
        assert not re.search(r"""(?:src|href|import|from|url)\s*[=(]?\s*["'(]?(?:https?:)?//""", text), path


def test_page_endpoints_exist(client: TestClient) -> None:
    paths = client.app.openapi()["paths"]
    missing = {(m, p) for m, p in PAGE_ENDPOINTS if m not in paths.get(p, {})}
    assert not missing


def test_runs_and_run_detail(client: TestClient) -> None:
    runs = client.get("/runs").json()["runs"]
    assert [(r["run"], r["checkpoints"], r["latest_tokens"]) for r in runs] == [("demo", 10, seed.END)]
    assert runs[0]["description"]
    detail = client.get("/runs/demo", params={"metrics_limit": 0}).json()
    assert detail["metrics"] == [] and detail["latest_tokens"] == seed.END and detail["latest_step"] == 100


def test_metric_series_covers_the_whole_run(client: TestClient) -> None:
    series = client.get("/runs/demo/metrics/series", params={"points": 10}).json()
    assert series["records"] == 110 and series["bucket"] == 10
    train, val = series["train"], series["val"]
    assert len(train) == 10 and len(val) == len(seed.CHECKPOINTS)  # every validation loss is kept
    assert train[0]["tokens"] < 25 * seed.M and train[-1]["tokens"] > 180 * seed.M
    assert all(a["tokens"] < b["tokens"] for a, b in itertools.pairwise(train))
    assert train[-1]["lr"] == pytest.approx(seed.PEAK_LR) and train[-1]["step"] == 100
    assert client.get("/runs/nope/metrics/series").status_code == 404


def test_downsample_averages_buckets_and_skips_other_records() -> None:
    records = [{"tokens": t, "loss": float(t), "lr": 0.1 * t, "step": t} for t in range(1, 8)]
    records += [
        {"tokens": 7, "val_loss": 2.5},
        {"tokens": 8, "grad_norm": 1.0},
        {"tokens": 9, "loss": "nan?"},
    ]
    bucket, train, val = downsample(records, points=3)
    assert bucket == 3
    assert [(p.tokens, p.loss, p.lr, p.step) for p in train] == [
        (2, 2, pytest.approx(0.3), 3),
        (5, 5, pytest.approx(0.6), 6),
        (7, 7, pytest.approx(0.7), 7),
    ]
    assert [(v.tokens, v.val_loss) for v in val] == [(7, 2.5)]


def test_downsample_after_a_resume_keeps_the_replayed_records() -> None:
    """Resumed from the checkpoint at 2: the replayed steps 3-4 replace the first attempt's."""
    first = [{"tokens": t, "loss": 10.0 + t} for t in range(1, 5)]
    replay = [{"tokens": t, "loss": float(t)} for t in range(3, 7)]
    _, train, _ = downsample(first + replay, points=100)
    assert [(p.tokens, p.loss) for p in train] == [(1, 11), (2, 12), (3, 3), (4, 4), (5, 5), (6, 6)]


def test_checkpoints_shape(client: TestClient) -> None:
    cks = client.get("/runs/demo/checkpoints").json()["checkpoints"]
    assert [c["tokens"] for c in cks] == seed.CHECKPOINTS


def test_models_carry_window_weights_and_curve(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/runs/demo/models").json()["models"]}
    expected = {name for name, *_ in (*seed.VARIANTS, *seed.FRONTIER, *seed.TWINS)} | {seed.BASELINE}
    assert set(models) == expected
    for name, curve, window, interval in seed.VARIANTS:
        m = models[name]
        assert m["id"] == f"demo:{name}" and m["kind"] == "anneal" and m["tokens"] == seed.END
        assert m["curve"]["name"] == curve and m["window_end"] - m["window_start"] == window
        tokens = [s["tokens"] for s in m["sources"]]
        assert {b - a for a, b in itertools.pairwise(tokens)} == {interval}
        assert sum(s["c"] for s in m["sources"]) == pytest.approx(1.0)
        # The page's effective LR: 1 on [S, t_0], then w_j, non-increasing, ending at the curve's end.
        w = [s["w"] for s in m["sources"][1:]]
        assert w == sorted(w, reverse=True) and 0 <= w[-1] <= w[0] <= 1
    baseline = models[seed.BASELINE]
    assert baseline["kind"] == "baseline" and baseline["window_start"] == seed.END - 80 * seed.M


def test_evals_match_models_and_checkpoints(client: TestClient) -> None:
    evals = client.get("/runs/demo/evals").json()["evals"]
    by_dir = {e["model_dir"]: e for e in evals}
    assert by_dir[layout.checkpoint_dir("demo", seed.END)]["metrics"] == seed.EVAL_METRICS["wso"]
    for name in [seed.BASELINE, *(v[0] for v in seed.VARIANTS)]:
        e = by_dir[layout.model_dir("demo", name)]
        assert e["metrics"] == seed.EVAL_METRICS[name] and e["created_at"]


def test_anneal_request_and_job_fields(client: TestClient) -> None:
    body = {"curve": "1-sqrt", "window": "60M", "interval": "20M", "run": "demo", "evaluate": True}
    accepted = client.post("/anneal", json=body)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["state"] == "queued" and job["created"] is True and job["run"] == "demo"
    sel = job["selection"]
    assert (sel["curve_label"], sel["window"], sel["window_end"]) == ("1-sqrt", 60 * seed.M, seed.END)
    assert [c["tokens"] for c in sel["checkpoints"]] == [160 * seed.M, 180 * seed.M, seed.END]
    polled = client.get(f"/anneal/{job['job_id']}").json()
    for field in ("stage", "progress", "message", "error", "model_id", "evaluations"):
        assert field in polled
    listed = client.get("/anneal", params={"run": "demo"}).json()["jobs"]
    assert job["job_id"] in [j["job_id"] for j in listed]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"curve": "1-sqrt", "window": "999M"}, "window"),
        ({"curve": "1-sqrt", "window": "40M", "interval": "30M"}, "interval"),
        ({"curve": "wiggly", "window": "40M"}, "curve"),
        ({"curve": "1-sqrt", "window": "40M", "floor": 2}, "floor"),
    ],
)
def test_anneal_validation_message(client: TestClient, body: dict[str, Any], words: str) -> None:
    """The form shows ``detail`` and marks the field it names first."""
    res = client.post("/anneal", json=body)
    assert res.status_code == 422
    err = res.json()
    assert err["error"] and words in err["detail"].lower()


def test_errors_and_health_shapes(client: TestClient) -> None:
    missing = client.get("/runs/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["store"]["ok"] and health["broker"]["detail"]


def test_token_needed_only_to_request(seeded: tuple[Store, seed.Seeded, Path]) -> None:
    """With WSM_API_TOKEN the page still reads; a request without the token gets 401 (it asks for one)."""
    store, _, root = seeded
    app = create_app(_settings(root, api_token="s3cret"), store=store, enqueuer=RecordingEnqueuer())
    client = TestClient(app)
    assert client.get("/runs").status_code == 200
    denied = client.post("/anneal", json={"window": "40M"})
    assert denied.status_code == 401 and "token" in denied.json()["detail"]
    ok = client.post("/anneal", json={"window": "40M"}, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code in (200, 202)


def test_empty_store(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "empty"))
    client = TestClient(create_app(_settings(tmp_path / "empty"), store=store, enqueuer=RecordingEnqueuer()))
    assert client.get("/runs").json() == {"runs": []}
    assert client.get("/").status_code == 200
