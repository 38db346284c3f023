"""Request size limits as pure ASGI middleware: 431 for oversized headers, 413 for oversized bodies.

Both answer before any route runs, with the API's error body. The body limit reads the body
itself, up to the limit, before the app sees the request: a chunked body (no Content-Length)
over the limit is then a 413 like a declared one, not an error deep inside FastAPI's body
parsing. Under ``wsm serve`` the header limit is also enforced while the request head is still
arriving (api/server.py), so an endless header is cut off instead of buffered; this middleware
covers any other server.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.asgi_errors import send_error

# "HTTP/1.1\r\n" and the spaces of the request line, then ": " and "\r\n" per header, then the
# blank line: what the head weighs on the wire, so both header checks count alike.
_REQUEST_LINE_OVERHEAD = 12
_HEADER_OVERHEAD = 4


def head_size(scope: Scope) -> int:
    """Approximate size in bytes of the request line and headers of ``scope`` as sent."""
    path = scope.get("raw_path") or scope.get("path", "").encode()
    query = scope.get("query_string", b"")
    size = len(scope.get("method", "")) + len(path) + len(query) + 1 + _REQUEST_LINE_OVERHEAD
    return size + sum(len(name) + len(value) + _HEADER_OVERHEAD for name, value in scope.get("headers", []))


class HeaderSizeLimit:
    """Answer 431 to a request whose request line and headers exceed ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and head_size(scope) > self.max_bytes:
            await send_error(
                send,
                431,
                "request_headers_too_large",
                f"request line and headers larger than {self.max_bytes} bytes",
                close=True,
            )
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """Answer 413 to any request whose body exceeds ``max_bytes``, declared or actually sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)  # before reading: no "100 Continue" for a body we refuse
                return
        # Read the whole (small) body here; the app gets it as one message, then the live channel
        # (a streaming response listens on it for the client's disconnect).
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                first: Message = message
                break
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        pending: list[Message] = [first]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        detail = f"request body larger than {self.max_bytes} bytes"
        await send_error(send, 413, "request_too_large", detail, close=True)
