"""The FastAPI application factory: ``api.app:create_app(settings=None)``.

Routes only validate and call the anneal use case (anneal/); merging and evaluation happen in workers.
``store`` can be injected; the ``enqueuer`` (the broker port) always is.

The factory refuses settings that would expose the API (api/exposure.py: placeholder token, no
token beyond loopback), whoever builds it. In front of every route, outermost first: the header
limit (431), the Host and loopback guard (400, 403), the body limit (413), and the redaction of
server paths from error bodies (api/redact.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

import wsm
from anneal.outbox import Publisher
from anneal.ports import Enqueuer
from api import errors, openapi
from api.exposure import HostGuard, allowed_hosts, check_startup
from api.limits import BodySizeLimit, HeaderSizeLimit
from api.listing import CachedListing
from api.redact import RedactErrors, Redactor
from api.routes import anneal, curves, grids, health, models, policies, research, runs
from wsm.settings import Settings, get_settings
from wsm.store import Store, open_store
from wsm.store.writable import WriteProbe

log = logging.getLogger(__name__)

DESCRIPTION = """Annealing as a service for never-decaying (WSO) pre-training runs.

`POST /anneal` merges a window of checkpoints with weights from Theorem 3.1 of the WSM paper,
publishes the annealed model and evaluates it and the plain WSO checkpoint. Model ids are
`<run>:<name>`. Mutating endpoints need `Authorization: Bearer <WSM_API_TOKEN>` when a token is set.
"""


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    enqueuer: Enqueuer | Callable[[], Enqueuer],
) -> FastAPI:
    """Build the API. ``enqueuer`` is an Enqueuer or a zero-argument factory of one.

    ``wsm serve`` passes the Celery adapter (wsm/commands/serve.py); tests pass fakes or it.
    """
    settings = settings or get_settings()
    check_startup(settings)
    app = FastAPI(title="wsm", version=wsm.__version__, description=DESCRIPTION, lifespan=_lifespan)
    app.state.settings = settings
    app.state.store = store or open_store(settings=settings)
    app.state.listing = CachedListing(app.state.store, ttl_s=settings.api_listing_ttl_s)
    app.state.write_probe = WriteProbe(app.state.store, ttl_s=settings.api_store_probe_s)
    if callable(enqueuer) and not hasattr(enqueuer, "enqueue"):
        app.state.enqueuer_factory = enqueuer
    else:
        app.state.enqueuer_factory = lambda: enqueuer
    app.state.publisher = Publisher(
        app.state.enqueuer_factory,
        check_s=settings.api_broker_check_s,
        retry_s=settings.api_broker_retry_s,
    )
    errors.install(app)
    for module in (anneal, runs, research, policies, grids, models, curves, health):
        app.include_router(module.router)
    _mount_dashboard(app)
    openapi.install(app, token_required=bool(settings.api_token))
    app.state.redactor = Redactor.for_app(app.state.store, settings)
    # add_middleware puts each one outside the previous: the last added sees a request first.
    app.add_middleware(RedactErrors, redactor=app.state.redactor)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(HostGuard, allowed=allowed_hosts(settings), loopback_only=not settings.api_token)
    app.add_middleware(HeaderSizeLimit, max_bytes=settings.api_max_header_bytes)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # Hand over what was acknowledged but not yet published (the recovery sweep covers the rest).
    await asyncio.to_thread(app.state.publisher.close)


def _mount_dashboard(app: FastAPI) -> None:
    try:
        from api.dashboard import mount_dashboard
    except ImportError:  # the dashboard is optional for the API itself
        log.info("dashboard not available; serving the API only")
        return
    mount_dashboard(app)
