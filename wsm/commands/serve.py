"""``wsm serve``: run the API (and dashboard) with uvicorn.

Without ``WSM_API_TOKEN`` the server refuses to listen beyond loopback: mutating endpoints would
be open to anyone who can reach it. It says so at start. A placeholder token is refused with a
one-line error (api/exposure.py). The request head is capped while it arrives (api/server.py).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from typing import Any

from api.exposure import allowed_hosts, check_startup, check_token, is_loopback

log = logging.getLogger("wsm.serve")

LOOPBACK = "127.0.0.1"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP API and dashboard",
        description="Serve the anneal API (FastAPI + uvicorn). Auth: WSM_API_TOKEN; without it, loopback only.",
    )
    parser.add_argument("--host", default=None, help="bind address (default WSM_API_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default WSM_API_PORT, 8000)")
    parser.add_argument(
        "--workers", type=int, default=None, help="server processes (default WSM_API_WORKERS, 1)"
    )
    parser.set_defaults(func=run)


def bind_host(requested: str, token: str | None) -> str:
    """The address to bind: ``requested``, or loopback when no token protects the API."""
    if token or is_loopback(requested):
        return requested
    log.warning(
        "WSM_API_TOKEN is not set: binding to %s only (not %s); set a token to serve other hosts",
        LOOPBACK,
        requested,
    )
    return LOOPBACK


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from wsm.settings import get_settings

    settings = get_settings()
    check_token(settings.api_token)  # a placeholder: one line and exit 2, before anything listens
    host = bind_host(args.host or settings.api_host, settings.api_token)
    port = args.port or settings.api_port
    # uvicorn builds the app in each server process from the environment: it must see the address
    # really bound, for its loopback rule and its default allowed Host names.
    os.environ["WSM_API_HOST"] = host
    get_settings.cache_clear()
    settings = get_settings()
    check_startup(settings)
    if not settings.api_token:
        log.warning("no WSM_API_TOKEN: mutating endpoints are unauthenticated; listening on loopback only")
    hosts = sorted(allowed_hosts(settings))
    log.info("serving the API on http://%s:%d (Host names answered: %s)", host, port, ", ".join(hosts))
    uvicorn.run(
        "wsm.commands.serve:create_service_app",
        factory=True,
        host=host,
        port=port,
        workers=args.workers or settings.api_workers,
        http="api.server:HeadLimitedHttpTools",
        # uvicorn logs through wsm's handler (one format on the screen), and like every third-party
        # library only from WARNING up unless wsm's level is DEBUG: its four start-up lines repeat
        # the "serving the API on" line above.
        log_config=None,
        log_level="debug" if settings.log_level.upper() == "DEBUG" else "warning",
        access_log=False,
    )
    return 0


def create_service_app() -> Any:
    """The API wired to the Celery broker: what ``wsm serve`` runs (uvicorn's factory).

    The API itself knows only the :class:`~anneal.ports.Enqueuer` port; the Celery adapter is
    chosen here, on top of every package. It is built on first use, so the app starts (and
    serves reads) even while the broker is down.
    """
    from anneal.broker.enqueue import CeleryEnqueuer
    from api.app import create_app
    from wsm.settings import get_settings

    settings = get_settings()
    return create_app(settings, enqueuer=functools.lru_cache(maxsize=1)(lambda: CeleryEnqueuer(settings)))
