"""``wsm serve``'s HTTP protocol: uvicorn's httptools protocol with a cap on the request head.

httptools reads a request's headers, however long, into memory until they end, and only then
does the app (api/limits.py) get to refuse them: a 50 MB header was accepted. This protocol
counts the bytes of a head while it arrives, and once they pass ``WSM_API_MAX_HEADER_BYTES``
answers 431 with the API's error body and closes the connection.

Chosen by ``wsm serve`` with ``http="api.server:HeadLimitedHttpTools"`` (an import string, so
every server process of ``--workers N`` loads it). A server started otherwise still has the app's
own 431 (api/limits.py); uvicorn's h11 protocol has its own head limit (16 KiB, answered 400).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wsm.settings import get_settings

log = logging.getLogger(__name__)


class HeadLimitedHttpTools(HttpToolsProtocol):
    """HttpToolsProtocol that refuses a request head larger than ``max_head_bytes`` as it arrives."""

    max_head_bytes: int | None = None
    """The cap; None reads ``WSM_API_MAX_HEADER_BYTES`` (a subclass may fix it, as tests do)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limit = self.max_head_bytes or get_settings().api_max_header_bytes
        self._in_head = False
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # The parser took all of ``data`` and the head has not ended: all of it was head (or,
            # at most, the tail of the previous request on this connection, counted with it).
            self._head_bytes += len(data)
            if self._head_bytes > self._limit:
                self._refuse_head()

    def _refuse_head(self) -> None:
        log.warning("request head from %s passed %d bytes: answered 431", self.client, self._limit)
        body = json.dumps(
            {
                "error": "request_headers_too_large",
                "detail": f"request line and headers larger than {self._limit} bytes",
                "choices": None,
            },
            separators=(",", ":"),
        ).encode()
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()
        self._in_head = False
