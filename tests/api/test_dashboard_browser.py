"""The dashboard in a real headless browser: Debian's chromium driven by Playwright.

A uvicorn server on a free loopback port serves the API over a store seeded with a tiny run
(tests/api/dashboard_seed.py). The worker behind ``POST /anneal`` is the scripted one from the
seed module: a real merge, stages paced so the polling page can be seen following them. The
screenshots are written to ``artifacts/`` (gitignored) and their paths printed.
"""

from __future__ import annotations

import json
import os
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
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the API (and dashboard) over a freshly seeded local store."""
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
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


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
    page.goto(server + "/")
    page.wait_for_selector(f'#variants-table tr[data-key="{ANNEAL_1SQRT}"]')

    assert page.locator('#run-list button[aria-pressed="true"]').inner_text().startswith(seed.RUN)
    # Table: the WSO checkpoint, the real decay baseline and both variants, with the seeded numbers.
    keys = page.eval_on_selector_all("#variants-table tbody tr", "rows => rows.map(r => r.dataset.key)")
    assert keys[0] == f"wso:{seed.END}" and len(keys) == 4
    for name, metrics in seed.EVAL_METRICS.items():
        key = f"wso:{seed.END}" if name == "wso" else f"{seed.RUN}:{name}"
        assert float(_cell(page, key, "sft_val_loss").get_attribute("data-value")) == metrics["sft_val_loss"]
        assert _shown(_cell(page, key, "pretrain_val_loss")) == f"{metrics['pretrain_val_loss']:g}"
        assert _shown(_cell(page, key, "sharpness")) == f"{metrics['sharpness_pretrain']:g}"
    assert _shown(_cell(page, f"wso:{seed.END}", "task_accuracy")) == "61.3%"
    assert "best" in _cell(page, f"wso:{seed.END}", "task_accuracy").get_attribute("class")

    # Every chart has a size, was painted, and plotted what the API served.
    charts = [
        "chart-training",
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
    stages = set()
    deadline = time.monotonic() + 30
    while job.get_attribute("data-status") != "succeeded":
        assert time.monotonic() < deadline, f"job did not finish; stages seen: {stages}"
        assert job.get_attribute("data-status") != "failed", job.inner_text()
        stages.add(job.get_attribute("data-stage"))
        time.sleep(0.15)
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
