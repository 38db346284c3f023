"""The dashboard: a static page at ``/`` that reads only the public API (no build step).

``mount_dashboard(app)`` serves ``api/static`` under ``/static`` and ``index.html`` at ``/``, and adds
the one read endpoint the charts need beyond the core API (api/routes/dashboard.py).
Chart.js is vendored in ``api/static/vendor`` so the page works without internet access.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api.routes import dashboard as dashboard_routes

STATIC_DIR = Path(__file__).resolve().parent / "static"


class _RevalidatedStatic(StaticFiles):
    """Static files the browser revalidates (ETag) on every load.

    The page stays open for days during pre-training; after an upgrade a reload must pick up the
    new scripts instead of a heuristically cached mix of old and new modules.
    """

    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "no-cache"
        return response


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard on ``app``: ``/`` (the page) and ``/static/*`` (its assets)."""
    app.include_router(dashboard_routes.router)
    app.mount("/static", _RevalidatedStatic(directory=STATIC_DIR), name="dashboard-static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})
