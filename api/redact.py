"""No absolute server paths in responses, whoever wrote the text (store, worker, trainer, broker).

A :class:`Redactor` knows this server's directories: a path inside a local store becomes
store-relative (``runs/r1/jobs/….json``), one inside the state, scratch or cache directory keeps
only a label (``<state_dir>/broker.sqlite``), any other absolute path keeps only its file name
(``…/corpus.jsonl``), and a URL loses its credentials. The full text stays in the server log.

Used two ways: response models built from records call :func:`current` (api/convert.py,
/healthz); and :class:`RedactErrors` rewrites every JSON or text error body on its way out, so an
error raised anywhere below it cannot carry a path. It also makes the app's redactor
:func:`current` for the request.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import re
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wsm.settings import Settings

_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/@'\"]+@")
_SEGMENT = r"[^\s'\"/:,;()<>\[\]{}|*?]+"
# Absolute paths of at least two components: not after a word (ratios, dates) nor inside a URL,
# unless the URL has no host (``file:///srv/x``, ``sqlite:////srv/x``: a local path).
_ABSOLUTE = re.compile(rf"(?:(?<![\w.:/~-])|(?<=[^/]://)|(?<=:///))/(?:{_SEGMENT}/)+{_SEGMENT}/?")
# The API's own routes ("GET /anneal/{job_id}") are not server paths.
_ROUTES = ("/anneal/", "/runs/", "/models/", "/healthz/")


class Redactor:
    """Turns server paths in text (or in JSON values) into store-relative paths and labels."""

    def __init__(self, roots: Iterable[tuple[str, str]] = (), store_label: str = "store") -> None:
        """``roots``: (absolute directory, label) pairs; the label ``""`` makes paths relative to it."""
        pairs: dict[str, str] = {}
        for root, label in roots:
            for variant in {root, os.path.realpath(root)}:
                variant = variant.rstrip("/")
                if len(variant) > 1:  # never "/" itself: every path would be "inside" it
                    pairs.setdefault(variant, label)
        self._roots = sorted(pairs.items(), key=lambda item: -len(item[0]))
        self._patterns = [
            (re.compile(r"(?<![\w.-])" + re.escape(root) + r"(?:/|(?![\w.-]))"), label)
            for root, label in self._roots
        ]
        self.store_label = store_label

    @classmethod
    def for_app(cls, store: Any, settings: Settings) -> Redactor:
        """The redactor of an app serving ``store`` with ``settings``."""
        roots: list[tuple[str, str]] = []
        if getattr(store, "is_local", False):
            roots.append((str(store.root), ""))
            label = "local store"
        else:
            label = _CREDENTIALS.sub(r"\1***@", str(getattr(store, "url", "store")))
        state = os.path.abspath(os.path.expanduser(settings.state_dir))
        if settings.merge_scratch_dir:
            roots.append((os.path.abspath(os.path.expanduser(settings.merge_scratch_dir)), "<scratch_dir>/"))
        roots += [
            (state, "<state_dir>/"),
            (os.path.abspath(os.path.expanduser(settings.cache_dir)), "<cache_dir>/"),
        ]
        return cls(roots, store_label=label)

    def text(self, value: str) -> str:
        if "/" not in value:
            return value
        value = _CREDENTIALS.sub(r"\1***@", value)
        for pattern, label in self._patterns:
            value = pattern.sub(functools.partial(_root_label, label=label), value)
        return _ABSOLUTE.sub(_keep_name, value)

    def json(self, value: Any) -> Any:
        """``value`` (a JSON-like structure) with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        return value


def _root_label(match: re.Match[str], label: str) -> str:
    if match.group(0).endswith("/"):
        return label  # what follows is relative to the root
    return label.rstrip("/") or "<store>"  # the directory itself


def _keep_name(match: re.Match[str]) -> str:
    path = match.group(0)
    if path.startswith(_ROUTES):
        return path
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return f"…/{name}"


_DEFAULT = Redactor()
_current: contextvars.ContextVar[Redactor] = contextvars.ContextVar("wsm_redactor", default=_DEFAULT)


def current() -> Redactor:
    """The redactor of the app serving this request (outside a request: one that knows no roots)."""
    return _current.get()


class RedactErrors:
    """Makes ``redactor`` current for each request, and redacts the body of every error response."""

    def __init__(self, app: ASGIApp, redactor: Redactor) -> None:
        self.app = app
        self.redactor = redactor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _current.set(self.redactor)
        start: Message | None = None
        chunks: list[bytes] = []

        async def redacting_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] >= 400 and _media_type(message) is not None:
                    start = message  # held until the whole (small) error body is here
                    return
                await send(message)
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._send_redacted(send, start, b"".join(chunks))
            else:
                await send(message)

        try:
            await self.app(scope, receive, redacting_send)
        finally:
            _current.reset(token)

    async def _send_redacted(self, send: Send, start: Message, body: bytes) -> None:
        try:
            if _media_type(start) != "json":
                raise ValueError("not JSON")
            body = json.dumps(
                self.redactor.json(json.loads(body)), ensure_ascii=False, separators=(",", ":")
            ).encode()
        except ValueError:  # text, or JSON that does not parse: redact it as text
            body = self.redactor.text(body.decode("utf-8", "replace")).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _media_type(start: Message) -> str | None:
    for name, value in start.get("headers", []):
        if name.lower() == b"content-type":
            if value.startswith(b"application/json"):
                return "json"
            if value.startswith(b"text/"):
                return "text"
    return None
