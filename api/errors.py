"""Typed API errors: every failure is an :class:`~api.schemas.ErrorOut` naming the problem.

Library exceptions are mapped here, in one place, so routes just let them propagate: bad names
and bad requests are 4xx with the message of the layer that found them (store, theory,
pipeline), a broker that cannot take the job is 503, and nothing a client sends becomes a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from anneal.errors import NoCheckpointsError, RequestError, UnknownRunError
from anneal.external import RunExistsError
from theory import TheoryError
from wsm.store import ArtifactNotFoundError, InvalidNameError, StoreError
from wsm.store.writable import StoreUnwritable

log = logging.getLogger(__name__)

STATUS_OF_ERROR: dict[type[RequestError], int] = {
    UnknownRunError: 404,
    NoCheckpointsError: 409,
    RunExistsError: 409,
}
"""The anneal use case's request errors that are not 422 (an invalid request)."""


class ApiError(Exception):
    """An error with its HTTP status, type and message (and, for closed sets, the valid choices)."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        choices: Sequence[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.choices = list(choices) if choices is not None else None
        self.headers = headers


def _body(error: str, detail: str, choices: list[str] | None = None) -> dict[str, Any]:
    return {"error": error, "detail": detail, "choices": choices}


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path (a path can have one route per method)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(request.scope["path"]):
            methods |= route.methods
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    """Register the exception handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            _body(exc.error, exc.detail, exc.choices), status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(
            _body(exc.code, str(exc), exc.choices), status_code=STATUS_OF_ERROR.get(type(exc), 422)
        )

    @app.exception_handler(TheoryError)
    async def theory_error(_: Request, exc: TheoryError) -> JSONResponse:
        return JSONResponse(_body("invalid_request", str(exc)), status_code=422)

    @app.exception_handler(InvalidNameError)
    async def invalid_name(_: Request, exc: InvalidNameError) -> JSONResponse:
        return JSONResponse(_body("invalid_name", str(exc)), status_code=400)

    @app.exception_handler(ArtifactNotFoundError)
    async def not_found(_: Request, exc: ArtifactNotFoundError) -> JSONResponse:
        return JSONResponse(_body("not_found", str(exc)), status_code=404)

    @app.exception_handler(StoreUnwritable)
    async def store_unwritable(_: Request, exc: StoreUnwritable) -> JSONResponse:
        # The reason alone (wsm/store/writable.py): never the OSError's text, which names server paths.
        return JSONResponse(
            _body("store_unwritable", f"{exc.reason}; nothing was recorded, try again later"),
            status_code=503,
        )

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        log.error("store error: %s", exc)
        return JSONResponse(
            _body("store_error", f"the store could not serve this request: {exc}"), status_code=503
        )

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_body("invalid_request", _validation_detail(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status_code, "http_error"
        )
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow names one route's methods, not the path's
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return JSONResponse(_body(error, str(exc.detail)), status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        # Answered outside the path redaction (api/redact.py): the message stays in the log only.
        detail = f"unexpected {type(exc).__name__}; the server log has the details"
        return JSONResponse(_body("internal_error", detail), status_code=500)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the ErrorOut body of ``codes``."""
    from api.schemas import ErrorOut

    text = {
        400: "Invalid name (run, model or job id)",
        401: "Missing or wrong bearer token",
        404: "Unknown run, job or model",
        409: "The run has no checkpoints yet (POST /anneal), or exists already (POST /runs)",
        413: "Request body too large",
        422: "Invalid request: the message names the bad field and the valid choices",
        503: "Broker unavailable, or the store cannot be read or written (full, read-only, denied)",
    }
    return {c: {"description": text[c], "model": ErrorOut} for c in codes}
