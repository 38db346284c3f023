"""ErrorOut bodies sent by the pure ASGI middleware (limits, hosts), which runs before FastAPI.

They have the same shape as every other error of the API (api/schemas.py ``ErrorOut``). A guard
that answers before reading the whole request closes the connection, so the server does not
keep reading (or buffering) what the client is still sending.
"""

from __future__ import annotations

import json

from starlette.types import Send


async def send_error(send: Send, status: int, error: str, detail: str, *, close: bool = False) -> None:
    body = json.dumps({"error": error, "detail": detail, "choices": None}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
