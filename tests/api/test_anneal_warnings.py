"""POST /anneal tells the client what to know about its window (anneal.resolve.window_warnings)."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_the_api_answers_with_the_warnings(client: TestClient) -> None:
    body = client.post("/anneal", json={"curve": "1-sqrt", "window": "80M", "evaluate": False}).json()
    assert any("of the run so far" in w for w in body["warnings"])
    recent = client.post("/anneal", json={"curve": "1-sqrt", "window": "20M", "evaluate": False}).json()
    assert recent["warnings"] == []


def test_the_run_says_which_window_to_anneal_first(client: TestClient) -> None:
    suggestion = client.get("/runs/r1").json()["suggestion"]
    # checkpoints every 10M up to 100M: the last 20% is under four intervals, so 40M, ready from 200M
    assert suggestion == {
        "window": 40_000_000,
        "checkpoints": 4,
        "ready_at": 200_000_000,
        "ready": False,
        "reason": suggestion["reason"],
    }
    assert "from 200M tokens on" in suggestion["reason"]
