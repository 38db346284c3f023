"""The OpenAPI document, completed so that it describes every answer the API really gives.

FastAPI documents its own 422 body (``HTTPValidationError``), but api/errors.py answers every
error with ``ErrorOut``. And some answers do not come from a route at all: the guards in front of
every route (api/limits.py, api/exposure.py) answer 400, 403, 413 and 431, path names are checked
by the store's naming rule (400) and looked up (404), and a store that cannot be read is a 503.
This module rewrites the generated document once, when it is first asked for, so that clients
and schemathesis (tests/api/test_schemathesis.py, every check) see those answers documented.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

# The store's naming rule (wsm/store/names.py: NAME_PATTERN, and no ".." anywhere); the API
# answers 400 ``invalid_name`` to anything else. A job id also names its record file,
# ``<job_id>.json``, so it is 5 characters shorter and does not end with a dot. Test generators
# cope with these look-aheads.
NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
NAMED = {
    "run": {"pattern": rf"^(?!.*\.\.){NAME}$"},
    "job_id": {"pattern": r"^(?!.*\.\.)(?!.*\.$)[A-Za-z0-9][A-Za-z0-9._-]{0,122}$"},
    "model_id": {"pattern": rf"^(?!.*\.\.){NAME}:{NAME}$"},
    # Policies and grids are stored like job records, ``<id>.json``: the same rule.
    "policy_id": {"pattern": r"^(?!.*\.\.)(?!.*\.$)[A-Za-z0-9][A-Za-z0-9._-]{0,122}$"},
    "grid_id": {"pattern": r"^(?!.*\.\.)(?!.*\.$)[A-Za-z0-9][A-Za-z0-9._-]{0,122}$"},
}

ERROR_REF = "#/components/schemas/ErrorOut"
FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")

ANY_ROUTE = {
    "400": "Bad request: an invalid name, or a Host header not in WSM_API_ALLOWED_HOSTS",
    "403": "Sent to a non-loopback address of a server that has no WSM_API_TOKEN",
    "413": "Request body larger than WSM_API_MAX_BODY_BYTES",
    "431": "Request line and headers larger than WSM_API_MAX_HEADER_BYTES",
    "503": "The store (or the broker) is unavailable",
}
WITH_PATH_NAMES = {"404": "Unknown run, job, model, policy or grid"}
WITH_INPUT = {"422": "Invalid request: the message names the bad field and the valid choices"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ERROR_REF}}}}


def complete(schema: dict[str, Any], *, token_required: bool) -> dict[str, Any]:
    """Complete ``schema`` in place (see the module docstring) and return it."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            parameters = operation.get("parameters", [])
            for parameter in parameters:
                _constrain(parameter.get("schema", {}), parameter.get("name", ""))
            extra = dict(ANY_ROUTE)
            if any(p.get("in") == "path" for p in parameters):
                extra.update(WITH_PATH_NAMES)
            if parameters or "requestBody" in operation:
                extra.update(WITH_INPUT)
            for code, description in extra.items():
                responses.setdefault(code, _error(description))
            if "422" in responses:  # FastAPI's own validation body is never sent: ErrorOut is
                responses["422"] = _error(responses["422"].get("description") or WITH_INPUT["422"])
            if operation.get("security") and not token_required:
                operation["security"] = [*operation["security"], {}]  # no token configured: optional
    components = schema.get("components", {}).get("schemas", {})
    for body in _request_bodies(schema):
        for name, field in components.get(body, {}).get("properties", {}).items():
            _constrain(field, name)
    for name in FASTAPI_VALIDATION:
        components.pop(name, None)
    dangling = [n for n in FASTAPI_VALIDATION if f"#/components/schemas/{n}" in json.dumps(schema)]
    assert not dangling, f"OpenAPI document still refers to {dangling}"
    return schema


def _constrain(field: dict[str, Any], name: str) -> None:
    """Document the naming rule on a string field or parameter called ``run``, ``job_id``, ``model_id``."""
    if name not in NAMED:
        return
    for option in [field, *field.get("anyOf", [])]:
        if option.get("type") == "string":
            option.update(NAMED[name])


def _request_bodies(schema: dict[str, Any]) -> set[str]:
    """Names of the component schemas used as request bodies."""
    refs = set()
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                ref = media.get("schema", {}).get("$ref", "")
                if ref.startswith("#/components/schemas/"):
                    refs.add(ref.rsplit("/", 1)[1])
    return refs


def install(app: FastAPI, *, token_required: bool) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) serve the completed document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            complete(generate(), token_required=token_required)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
