"""The dashboard in a real headless browser: Debian's chromium driven by Playwright.

A uvicorn server on a free loopback port serves the API over a store seeded with a tiny run
(tests/api/dashboard_seed.py). The worker behind ``POST /anneal`` is the scripted one from the
seed module: a real merge, stages paced so the polling page can be seen following them. The
screenshots are written to ``artifacts/`` (gitignored) and their paths printed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app
from tests.api import dashboard_seed as seed
from tests.conftest import make_settings
from wsm.store import Store

CHROMIUM = os.environ.get("WSM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ANNEAL_1SQRT = f"{seed.RUN}:{seed.VARIANTS[0][0]}"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"needs Debian's chromium at {CHROMIUM}"),
]
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Store, Any]]:
    """Base URL of the API (and dashboard) over a freshly seeded local store, the store and settings."""
    root = tmp_path_factory.mktemp("store")
    store = Store(str(root))
    seed.seed_all(store)
    seed.seed_run(store, "fresh", with_checkpoints=False)  # training, nothing saved yet
    settings = make_settings(
        store_url=str(root), state_dir=str(tmp_path_factory.mktemp("state")), api_token=None
    )
    app = create_app(settings, store=store, enqueuer=seed.ScriptedWorker(store, step_s=0.5))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store, settings
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(backend: tuple[str, Store, Any]) -> str:
    return backend[0]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One chromium per module (startup is the slow part), with a fresh profile directory."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        yield context
        context.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15_000)
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _painted_pixels(page: Any, canvas_id: str) -> int:
    """Non-transparent pixels of a canvas: the chart was drawn, not just laid out."""
    return int(
        page.evaluate(
            """(id) => { const c = document.getElementById(id);
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""",
            canvas_id,
        )
    )


def _cell(page: Any, key: str, metric: str) -> Any:
    return page.locator(f'#variants-table tr[data-key="{key}"] td[data-metric="{metric}"]')


def _shown(cell: Any) -> str:
    """The number a cell shows (without the screen-reader-only "(best)")."""
    return str(cell.inner_text()).splitlines()[0].strip()


def test_renders_the_seeded_run(server: str, page: Any) -> None:
    page.goto(f"{server}/#run={seed.RUN}&point={seed.END}&variant={ANNEAL_1SQRT}")
    page.wait_for_selector(f'#variants-table tr[data-key="{ANNEAL_1SQRT}"]')

    assert page.locator('#run-list button[aria-pressed="true"]').inner_text().startswith(seed.RUN)
    # Table: the WSO checkpoint, the real decays and the variants, with the seeded numbers.
    keys = page.eval_on_selector_all("#variants-table tbody tr", "rows => rows.map(r => r.dataset.key)")
    kinds = page.eval_on_selector_all("#variants-table tbody tr", "rows => rows.map(r => r.dataset.kind)")
    assert keys[0] == f"wso:{seed.END}" and len(keys) == 6
    assert kinds == ["wso", "baseline", "baseline", "anneal", "anneal", "anneal"]
    for name, metrics in seed.EVAL_METRICS.items():
        key = f"wso:{seed.END}" if name == "wso" else f"{seed.RUN}:{name}"
        assert float(_cell(page, key, "sft_val_loss").get_attribute("data-value")) == metrics["sft_val_loss"]
        # Losses with three decimals, always (3.400 never reads like 3.4).
        assert _shown(_cell(page, key, "pretrain_val_loss")) == f"{metrics['pretrain_val_loss']:.3f}"
        assert _shown(_cell(page, key, "sft_val_loss")) == f"{metrics['sft_val_loss']:.3f}"
        assert _shown(_cell(page, key, "sharpness")) == f"{metrics['sharpness_pretrain']:g}"
    assert _shown(_cell(page, f"wso:{seed.END}", "task_accuracy")) == "61.3%"
    # Benchmark scores (lm-eval) beside them, with their standard errors; "–" where none were run.
    assert page.locator("#bench-table").is_visible()
    assert page.locator("#bench-table thead").inner_text().split("\t")[-1].strip() == "wsm_count · acc"
    bench = page.eval_on_selector_all("#bench-table tbody tr td", "cells => cells.map(c => c.textContent)")
    assert "0.41 ± 0.03" in bench and "0.47 ± 0.03" in bench and "–" in bench
    assert "best" in _cell(page, f"wso:{seed.END}", "task_accuracy").get_attribute("class")

    # Every chart has a size, was painted, and plotted what the API served.
    charts = [
        "chart-training",
        "chart-frontier",
        "chart-pairs",
        "chart-inversion",
        "chart-weights",
        "chart-lr",
        *(f"chart-metric-{m}" for m in ("pretrain_val_loss", "sft_val_loss", "task_accuracy", "sharpness")),
    ]
    for chart in charts:
        box = page.locator(f"#{chart}").bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, chart
        assert _painted_pixels(page, chart) > 500, chart
    series = httpx.get(f"{server}/runs/{seed.RUN}/metrics/series", params={"points": 800}).json()
    assert page.get_attribute("#chart-training", "data-points") == str(len(series["train"]))
    assert page.get_attribute("#chart-inversion", "data-points") == "4"
    terms = page.locator("#run-stats dt").all_inner_texts()
    stats = dict(zip(terms, page.locator("#run-stats dd").all_inner_texts(), strict=True))
    assert stats["loss"] == f"{series['train'][-1]['loss']:.3f}"

    # The selected variant (1-sqrt over 80M every 20M): its c_j and the steps 1, w_1..w_k.
    model = seed.variant_weights(seed.VARIANTS[0])
    assert page.input_value("#variant-select") == ANNEAL_1SQRT
    weights = page.locator("#chart-weights").get_attribute("data-values")
    assert [round(v, 6) for v in _floats(weights)] == [round(c, 6) for c in model["c"]]
    steps = _floats(page.locator("#chart-lr").get_attribute("data-values"))
    assert steps[1::2] == pytest.approx([1.0, *model["w"], model["w"][-1]])
    _screenshot(page, "dashboard.png")


def _floats(data: str | None) -> list[float]:
    """A canvas's data-values (numbers or [x, y] pairs), flattened."""
    values = json.loads(data or "[]")
    return [float(v) for pair in values for v in (pair if isinstance(pair, list) else [pair])]


def test_request_anneal_and_follow_the_job(server: str, page: Any) -> None:
    page.goto(server + "/")
    page.wait_for_selector("#variants-table tbody tr")
    page.select_option("#f-curve", "linear")
    page.fill("#f-window", "60M")
    page.fill("#f-interval", "20M")
    page.click("#f-submit")

    job = page.locator("#jobs li").first
    job.wait_for()
    assert "linear · 60M window · at 200M" in job.inner_text()
    stages: set[str | None] = set()
    deadline = time.monotonic() + 30
    while job.get_attribute("data-status") != "succeeded":
        assert time.monotonic() < deadline, f"job did not finish; stages seen: {stages}"
        assert job.get_attribute("data-status") != "failed", job.inner_text()
        stages.add(job.get_attribute("data-stage"))
        time.sleep(0.15)
    # The job lists the phases it runs: this one evaluates, and its merge is not split.
    phases = job.locator(".phases li").evaluate_all("lis => lis.map(li => li.dataset.phase)")
    assert phases == [
        "queued",
        "resolving",
        "merging",
        "waiting_eval",
        "evaluating_anneal",
        "evaluating_baseline",
        "done",
    ]
    # Followed live without reloading: at least two intermediate stages were shown.
    assert len(stages & {"queued", "resolving", "merging", "publishing", "evaluating_anneal"}) >= 2, stages

    # The page reloads the run when the job ends: the new model is selected, in the table with its
    # evaluation, and its weights are charted.
    selected = f'#variants-table tr[data-key^="{seed.RUN}:anneal-linear-w60M-at-200M"][aria-selected="true"]'
    new_key = page.wait_for_selector(selected).get_attribute("data-key")
    assert page.locator("#variant-select").input_value() == new_key
    assert (
        float(_cell(page, new_key, "sft_val_loss").get_attribute("data-value"))
        == seed.WORKER_METRICS["sft_val_loss"]
    )
    assert _floats(page.locator("#chart-weights").get_attribute("data-values")) == pytest.approx([1 / 3] * 3)
    assert page.get_attribute("#chart-inversion", "data-points") == "5"
    _screenshot(page, "dashboard-after-anneal.png")


def test_bad_window_shows_the_api_message(server: str, page: Any) -> None:
    page.goto(server + "/")
    page.wait_for_selector("#variants-table tbody tr")
    expected = httpx.post(
        f"{server}/anneal", json={"curve": "1-sqrt", "window": "5T", "run": seed.RUN}
    ).json()
    # Keyboard only: focus the curve, tab to the window, type, Enter submits.
    page.focus("#f-curve")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-window"
    page.keyboard.type("5T")
    page.keyboard.press("Enter")
    page.wait_for_selector("#form-error:not(:empty)")
    assert page.inner_text("#form-error") == expected["detail"]
    assert page.get_attribute("#f-window", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "f-window"

    page.fill("#f-window", "")
    page.click("#f-submit")  # empty: the page asks before calling the API
    assert "Enter a window" in page.inner_text("#e-window")


def test_empty_and_error_states(server: str, page: Any) -> None:
    """Each state says what to do next; the API's answers are replaced by Playwright routes."""
    runs_state = '.state[data-for="runs"]'
    page.route("**/runs", lambda route: route.fulfill(json={"runs": []}))
    page.goto(server + "/")
    page.wait_for_selector(f'{runs_state}[data-kind="empty"]')
    text = page.inner_text(runs_state)
    assert "No runs yet" in text and "wsm train --config" in text and "wsm up" in text
    page.unroute("**/runs")

    page.route("**/runs", lambda route: route.abort())
    page.reload()
    page.wait_for_selector(f'{runs_state}[data-kind="error"]')
    assert "Cannot reach the wsm API" in page.inner_text(runs_state)
    page.wait_for_selector('#health[data-state="ok"]')  # the API itself still answers
    page.unroute("**/runs")

    page.route(f"**/runs/{seed.RUN}/models", lambda route: route.fulfill(json={"models": []}))
    page.reload()
    page.wait_for_selector('.state[data-for="compare"][data-kind="empty"]')
    text = page.inner_text('.state[data-for="compare"]')
    assert "No annealed models yet" in text and f"wsm anneal --run {seed.RUN}" in text
    assert page.locator("#chart-training").bounding_box()["height"] > 100  # the run still shows


def test_switch_to_a_run_without_checkpoints(server: str, page: Any) -> None:
    page.goto(server + "/")
    page.wait_for_selector("#variants-table tbody tr")
    page.click('#run-list button[data-run="fresh"]')
    page.wait_for_selector('.state[data-for="compare"][data-kind="empty"]')
    assert page.inner_text("#training-title") == "Pre-training · fresh"
    assert page.get_attribute('#run-list button[data-run="fresh"]', "aria-pressed") == "true"
    assert "No checkpoints yet" in page.inner_text('.state[data-for="compare"]')
    assert "run=fresh" in page.url  # a reload or a shared link shows the same run
    assert int(page.get_attribute("#chart-training", "data-points")) > 0

    page.fill("#f-window", "40M")
    page.click("#f-submit")
    page.wait_for_selector("#form-error:not(:empty)")
    assert "no published checkpoints" in page.inner_text("#form-error")


def test_phone_layout(server: str, browser: Any) -> None:
    phone = browser.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    try:
        phone.goto(server + "/")
        phone.wait_for_selector("#variants-table tbody tr")
        width = phone.evaluate("document.documentElement.scrollWidth")
        _screenshot(phone, "dashboard-phone.png")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
        box = phone.locator("#chart-training").bounding_box()
        assert box and box["width"] > 250
    finally:
        phone.close()


WIDTHS = {"desktop": {"width": 1400, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(params=list(WIDTHS))
def sized(request: pytest.FixtureRequest, browser: Any) -> Iterator[tuple[str, Any]]:
    """A page at desktop and at phone width (the research sections must work on both)."""
    page = browser.new_page()
    page.set_viewport_size(WIDTHS[request.param])
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15_000)
    yield request.param, page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _texts(page: Any, selector: str) -> list[str]:
    return [str(t).strip() for t in page.locator(selector).all_inner_texts()]


def test_merge_against_real_decay(server: str, sized: tuple[str, Any]) -> None:
    width, page = sized
    page.goto(f"{server}/#run={seed.RUN}")
    page.wait_for_selector("#pairs-table tbody tr")
    expected = httpx.get(f"{server}/runs/{seed.RUN}/compare").json()
    rows = page.locator("#pairs-table tbody tr")
    assert rows.count() == len(expected["rows"]) == 2
    for i, row in enumerate(expected["rows"]):
        stats = row["metrics"]["pretrain_val_loss"]
        tr = rows.nth(i)
        assert tr.get_attribute("data-model") == row["model_id"]
        assert tr.get_attribute("data-within") == str(stats["within_noise"]).lower()
        assert float(tr.locator('td[data-role="gap"]').get_attribute("data-value")) == pytest.approx(
            stats["gap_pct"]
        )
        recovered = tr.locator('td[data-role="recovered"]')
        assert recovered.inner_text() == f"{round(stats['recovered'] * 100)}%"
        # The real decay names its curve; losses carry three decimals (and the seeds' spread).
        decay = tr.locator('td[data-role="decay"]').inner_text()
        assert decay.startswith(f"{row['curve']}: ") and f"{stats['decay']['mean']:.3f}" in decay
        assert tr.locator('td[data-role="merge"]').inner_text() == f"{stats['merge']['mean']:.3f}"
    assert "± 0.003" in rows.nth(1).locator('td[data-role="decay"]').inner_text()  # two seeds: error bar
    assert _texts(page, "#pairs-table tbody .badge") == ["within noise", "above noise"]
    assert page.get_attribute("#chart-pairs", "data-points") == "2"
    assert _painted_pixels(page, "chart-pairs") > 500
    # Another metric is a selection away; the table follows it.
    page.select_option("#pairs-metric", "sft_val_loss")
    page.wait_for_function(
        "document.querySelector('#pairs-table td[data-role=merge]').textContent === '1.900'"
    )
    page.locator("#pairs").scroll_into_view_if_needed()
    _screenshot_element(page, "#pairs", f"pairs-{width}.png")


def test_annealed_frontier(server: str, sized: tuple[str, Any]) -> None:
    width, page = sized
    page.goto(f"{server}/#run={seed.RUN}")
    page.wait_for_selector("#chart-frontier[data-variant-points]")
    frontier = httpx.get(f"{server}/runs/{seed.RUN}/frontier").json()
    drawn = json.loads(page.get_attribute("#chart-frontier", "data-values") or "[]")
    by_label = {d["label"]: d["points"] for d in drawn}
    # The policy's series: one point per anneal point, each where the API put it.
    policy = by_label["anneal 1-sqrt 40M / 20M"]
    series = next(s for s in frontier["series"] if s["key"] == f"anneal|1-sqrt|{40 * seed.M}|{20 * seed.M}")
    assert [p[0] for p in policy] == [p["tokens"] for p in series["points"]]
    assert [p[1] for p in policy] == pytest.approx(
        [p["metrics"]["pretrain_val_loss"]["mean"] for p in series["points"]]
    )
    assert len(by_label["WSO val loss (trainer)"]) == len(seed.CHECKPOINTS)
    assert len(by_label["WSO checkpoint (evaluated)"]) == len(seed.WSO_EVALUATED)
    assert "real decay 1-sqrt 80M" in by_label
    assert _painted_pixels(page, "chart-frontier") > 500
    page.select_option("#frontier-metric", "sft_val_loss")
    # The trainer measures only the pre-training loss: its curve leaves with that metric.
    page.wait_for_function(
        "!JSON.parse(document.querySelector('#chart-frontier').dataset.values)"
        ".some(d => d.label === 'WSO val loss (trainer)')"
    )
    _screenshot_element(page, "#frontier", f"frontier-{width}.png")


def test_training_chart_draws_branches_and_separate_labels(server: str, sized: tuple[str, Any]) -> None:
    width, page = sized
    page.goto(f"{server}/#run={seed.RUN}")
    page.wait_for_selector("#chart-training[data-branches]")
    branches = {
        b["id"]: b for b in json.loads(page.get_attribute("#chart-training", "data-branches") or "[]")
    }
    served = httpx.get(f"{server}/runs/{seed.RUN}/branches").json()["branches"]
    assert set(branches) == {b["model_id"] for b in served}
    for b in served:
        drawn = branches[b["model_id"]]
        # From the fork point on: its first step ends one step after the fork.
        assert drawn["fork"] == b["fork_tokens"] and drawn["first"] == b["fork_tokens"] + seed.TOKENS_PER_STEP
        assert drawn["lr"] == len(b["points"]) and drawn["loss"] == len(b["points"])
    labels = json.loads(page.get_attribute("#chart-training", "data-labels") or "[]")
    assert len(labels) == len(httpx.get(f"{server}/runs/{seed.RUN}/models").json()["models"])
    assert any("real decay cosine" in label["label"] for label in labels)
    placed = [label for label in labels if label["lane"] is not None]
    assert len(placed) >= min(len(labels), 4)
    for lane in {label["lane"] for label in placed}:
        boxes = sorted((label["x0"], label["x1"]) for label in placed if label["lane"] == lane)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(boxes)), (
            f"labels overlap in lane {lane}: {boxes}"
        )
    _screenshot_element(page, "#training", f"training-{width}.png")


def test_real_decay_rows_name_their_curve(server: str, page: Any) -> None:
    page.goto(f"{server}/#run={seed.RUN}&point={seed.END}")
    page.wait_for_selector('#variants-table tr[data-kind="baseline"]')
    names = _texts(page, '#variants-table tr[data-kind="baseline"] th > span:nth-child(2)')
    assert sorted(names) == ["Real decay · 1-sqrt", "Real decay · cosine"]
    shorts = page.locator("#chart-metric-pretrain_val_loss").evaluate(
        "c => Chart.getChart(c).data.labels.map(l => [].concat(l).join(' '))"
    )
    assert {"real decay 1-sqrt 80M", "real decay cosine 80M"} <= set(shorts)


def test_empty_charts_say_so(server: str, page: Any) -> None:
    page.route(f"**/runs/{seed.RUN}/evals", lambda route: route.fulfill(json={"evals": []}))
    page.goto(f"{server}/#run={seed.RUN}&point={seed.END}")
    page.wait_for_selector("#metric-charts .chart-empty")
    for metric in ("pretrain_val_loss", "sft_val_loss", "task_accuracy", "sharpness"):
        canvas = page.locator(f"#chart-metric-{metric}")
        assert canvas.get_attribute("data-points") == "0" and not canvas.is_visible()
        note = page.locator(f"#chart-metric-{metric} + .chart-empty").inner_text()
        assert "at this point yet" in note
    # A grid whose cells are not evaluated yet: the chart says so instead of drawing empty axes.
    grid = {
        "grid_id": "grid-1",
        "run": seed.RUN,
        "end": seed.END,
        "curves": ["1-sqrt"],
        "windows": [40 * seed.M],
        "intervals": [None],
        "evaluate": True,
        "created_at": "2025-01-01T00:00:00Z",
        "created": None,
        "cells": [
            {
                "curve": {"name": "1-sqrt"},
                "curve_label": "1-sqrt",
                "window": 40 * seed.M,
                "interval": None,
                "state": "running",
                "job_id": "job-1",
                "stage": "merging",
                "progress": 10.0,
                "model_id": None,
                "checkpoints": 2,
                "error": None,
                "metrics": {},
                "wso_metrics": {},
            }
        ],
    }
    page.route(re.compile(r".*/grids\?run=.*"), lambda route: route.fulfill(json={"grids": [grid]}))
    page.reload()
    page.wait_for_selector("#grid-table tbody tr")
    assert "No evaluated cell yet" in page.locator("#chart-grid + .chart-empty").inner_text()
    assert page.locator('#grid-table td[data-state="running"]').inner_text() == "running"


def test_policy_from_the_page(backend: tuple[str, Store, Any], page: Any) -> None:
    from anneal import policies

    server, store, settings = backend
    page.goto(f"{server}/#run={seed.RUN}")
    page.wait_for_selector("#pairs-table tbody tr")
    assert page.locator("#policies-empty").is_visible()
    page.select_option("#p-curve", "1-sqrt")
    page.fill("#p-window", "40M")
    page.fill("#p-every", "100M")
    page.uncheck("#p-evaluate")
    page.click("#policy-form button[type=submit]")
    card = page.locator("#policies li.policy").first
    card.wait_for()
    assert "1-sqrt · 40M window · every 100M" in card.inner_text()
    assert card.locator(".point").evaluate_all("ps => ps.map(p => p.dataset.state)") == ["waiting", "waiting"]
    # What a worker's recovery sweep does; the page shows the points' jobs after a reload.
    policies.sweep(store, settings, lambda run, job_id: None)
    page.reload()
    page.wait_for_selector("#policies li.policy .point-queued")
    assert "0 of 2 point(s) done" in page.locator("#policies li.policy").first.inner_text()
    page.click("#policies li.policy button")
    page.wait_for_selector("#policies-empty:not([hidden])")
    assert httpx.get(f"{server}/policies", params={"run": seed.RUN}).json()["policies"] == []


def test_job_without_evaluation_lists_no_evaluation_phase(server: str, page: Any) -> None:
    page.goto(f"{server}/#run={seed.RUN}")
    page.wait_for_selector("#variants-table tbody tr")
    page.select_option("#f-curve", "cosine")
    page.fill("#f-window", "40M")
    page.uncheck("#f-evaluate")
    page.click("#f-submit")
    job = page.locator("#jobs li").first
    job.wait_for()
    assert "cosine · 40M window" in job.inner_text()
    phases = job.locator(".phases li").evaluate_all("lis => lis.map(li => li.dataset.phase)")
    assert phases == ["queued", "resolving", "merging", "done"]


def test_anneal_in_megatron_layout_from_the_page(backend: tuple[str, Store, Any], page: Any) -> None:
    """The format choice is the API's list (OpenAPI's enum of POST /anneal), and it reaches the job."""
    from anneal import jobs

    server, store, _ = backend
    page.goto(f"{server}/#run={seed.RUN}")
    page.wait_for_selector("#variants-table tbody tr")
    page.click("details.more summary")
    page.wait_for_function("document.querySelectorAll('#f-out_format option').length > 1")
    options = page.locator("#f-out_format option").evaluate_all("os => os.map(o => o.value)")
    assert options == ["safetensors", "torch_dist"]
    assert page.locator("#f-out_format").input_value() == "safetensors"
    page.select_option("#f-curve", "linear")
    page.fill("#f-window", "40M")
    page.select_option("#f-out_format", "torch_dist")
    page.uncheck("#f-evaluate")
    page.click("#f-submit")
    page.locator("#jobs li").first.wait_for()
    specs = [r.spec for r in jobs.list_jobs(store, seed.RUN) if r.spec.out_format == "torch_dist"]
    assert [s.model_name.endswith("-torch_dist") for s in specs] == [True]


def test_grid_from_the_page(server: str, page: Any) -> None:
    page.goto(f"{server}/#run={seed.RUN}")
    page.wait_for_selector("#grid-curves input")
    page.check('#grid-curves input[value="linear"]')
    page.fill("#g-windows", "40M, 60M")
    page.fill("#g-intervals", "20M")
    page.click("#grid-form button[type=submit]")
    page.wait_for_selector("#grid-table tbody tr")
    assert _texts(page, "#grid-table thead th")[1:] == ["40M window", "60M window"]
    assert len(_texts(page, "#grid-table tbody tr")) == 2
    # The scripted worker merges and evaluates each cell; the page shows them on its next loads.
    deadline = time.monotonic() + 60
    while page.get_attribute("#chart-grid", "data-points") != "4":
        assert time.monotonic() < deadline, page.inner_text("#grids")
        time.sleep(1)
        page.reload()
        page.wait_for_selector("#grid-table tbody tr")
    cells = page.locator("#grid-table td[data-value]").evaluate_all("tds => tds.map(td => td.textContent)")
    assert cells == [f"{seed.WORKER_METRICS['pretrain_val_loss']:.3f}"] * 4
    _screenshot_element(page, "#grids", "grids-desktop.png")


def _screenshot_element(page: Any, selector: str, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.locator(selector).screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path
