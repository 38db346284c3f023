"""GET /curves serves theory's registry, and no client keeps a copy of it (issue 13: one source per fact)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from theory import ALIASES, CURVE_NAMES, CurveSpec

STATIC = Path(__file__).resolve().parents[2] / "api" / "static"


def test_curves_are_the_registry(client: TestClient) -> None:
    curves = client.get("/curves").json()["curves"]
    assert [c["name"] for c in curves] == list(CURVE_NAMES)
    assert sorted(a for c in curves for a in c["aliases"]) == sorted(ALIASES)
    by_name = {c["name"]: c for c in curves}
    assert "alpha" in by_name["ema"]["parameters"] and "coefficients" in by_name["custom"]["parameters"]
    assert by_name["ema"]["shape"] is None and by_name["custom"]["shape"] is None
    shape = by_name["1-sqrt"]["shape"]
    x = np.array([p["x"] for p in shape])
    assert np.allclose([p["y"] for p in shape], CurveSpec("1-sqrt").decay_at(x))


def test_the_dashboard_keeps_no_copy_of_the_registry() -> None:
    """The form's curve list and every curve drawn come from the API: no names list, no curve math."""
    html = (STATIC / "index.html").read_text()
    select = re.search(r'<select id="f-curve"[^>]*>(.*?)</select>', html, re.S)
    assert (
        select is not None and len(re.findall(r"<option", select.group(1))) <= 1
    )  # a placeholder until /curves answers
    scripts = [p.read_text() for p in [STATIC / "app.js", *(STATIC / "js").glob("*.js")]]
    for source in scripts:
        assert not re.search(r"Math\.(sqrt|cos|pow)|\*\*\s*x", source), "curve math belongs in theory/"
        assert '"exponential"' not in source and '"cosine"' not in source
