"""POST /anneal tells the client what to know about its window (anneal.resolve.window_warnings)."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_the_api_answers_with_the_warnings(client: TestClient) -> None:
    body = client.post("/anneal", json={"curve": "1-sqrt", "window": "80M", "evaluate": False}).json()
    assert any("of the run so far" in w for w in body["warnings"])
    recent = client.post("/anneal", json={"curve": "1-sqrt", "window": "20M", "evaluate": False}).json()
    assert recent["warnings"] == []
