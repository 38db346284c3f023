"""Who may reach the API: start-up refusals, allowed ``Host`` names, and loopback-only serving.

Checked wherever the app is built (api/app.py) and first by ``wsm serve``:

* A placeholder token, such as ``.env.example``'s, is refused: it is published, so it protects
  nothing.
* Without a token, mutating endpoints are open to whoever reaches the server, so it serves
  loopback only: a non-loopback ``WSM_API_HOST`` is refused at start-up, and a request that
  arrives on a non-loopback address anyway (a server started by hand on another address) gets 403.
* The ``Host`` header must be one of ``WSM_API_ALLOWED_HOSTS`` (400 otherwise). This defeats DNS
  rebinding, where a web page makes a browser send requests to a loopback API under the page's
  own host name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

from starlette.types import ASGIApp, Receive, Scope, Send

from api.asgi_errors import send_error
from wsm.settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
PLACEHOLDER_MARKERS = (
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "placeholder",
    "your-token",
    "example",
)


class ExposureError(ValueError):
    """A configuration that would expose the API; its message is one line, said at start-up."""


def placeholder_marker(token: str) -> str | None:
    """The part of ``token`` that marks it as a placeholder, or None for a real-looking token."""
    lowered = token.strip().lower()
    if not lowered:
        return "only blanks"
    return next((m for m in PLACEHOLDER_MARKERS if m in lowered), None)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_token(token: str | None) -> None:
    """Refuse a placeholder token (unset or empty means no token, which is allowed on loopback)."""
    if token and (marker := placeholder_marker(token)) is not None:
        raise ExposureError(
            f"WSM_API_TOKEN is a placeholder (it contains {marker!r}); set a secret of your own, e.g. "
            "the output of: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


def check_startup(settings: Settings) -> None:
    """Refuse a placeholder token, and a non-loopback bind address without a token."""
    token = settings.api_token
    check_token(token)
    if not token and not is_loopback(settings.api_host):
        raise ExposureError(
            f"WSM_API_TOKEN is not set, so the API serves loopback only, but WSM_API_HOST is "
            f"{settings.api_host!r}: set WSM_API_TOKEN, or bind to 127.0.0.1"
        )


def host_name(value: str) -> str:
    """The name part of a ``Host`` header or an allowed-hosts entry: no port, no brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        value = value.partition(":")[0]
    return value.rstrip(".")


def _machine_names() -> set[str]:
    """This machine's host name and the addresses it resolves to (what a wildcard bind serves)."""
    hostname = socket.gethostname()
    names = {hostname.lower()}
    with contextlib.suppress(OSError):  # a host name that does not resolve: the name alone
        names |= {str(info[4][0]).lower() for info in socket.getaddrinfo(hostname, None)}
    return names


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The configured names, or loopback names plus what ``api_host`` binds (see the setting)."""
    if settings.api_allowed_hosts is not None:
        return frozenset(
            e if e.startswith(".") or e == "*" else host_name(e) for e in settings.api_allowed_hosts
        )
    names = set(LOOPBACK_NAMES)
    bind = host_name(settings.api_host)
    if bind in WILDCARD_BINDS:
        names |= _machine_names()
    else:
        names.add(bind)
    return frozenset(names)


def host_allowed(header: str, allowed: frozenset[str]) -> bool:
    if "*" in allowed:
        return True
    name = host_name(header)
    if not name:
        return False
    return name in allowed or any(e.startswith(".") and (name.endswith(e) or name == e[1:]) for e in allowed)


def _arrived_on_loopback(scope: Scope) -> bool:
    server = scope.get("server")
    if not server or not isinstance(server[0], str):
        return True  # a Unix socket, or an in-process client: not reachable from the network
    try:
        ipaddress.ip_address(server[0].strip("[]"))
    except ValueError:
        return True  # not an address the server listens on (TestClient says "testserver")
    return is_loopback(server[0])


class HostGuard:
    """400 for a ``Host`` that is not allowed; 403 for a request off loopback when no token is set."""

    def __init__(self, app: ASGIApp, *, allowed: frozenset[str], loopback_only: bool) -> None:
        self.app = app
        self.allowed = allowed
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.loopback_only and not _arrived_on_loopback(scope):
            detail = (
                "this server has no WSM_API_TOKEN and answers on loopback only; set a token to serve others"
            )
            await send_error(send, 403, "loopback_only", detail, close=True)
            return
        host = next((v for k, v in scope.get("headers", []) if k == b"host"), b"").decode("latin-1")
        if not host_allowed(host, self.allowed):
            shown = f"{host[:100]!r}" if host else "(none)"
            detail = f"Host {shown} is not served here; add the name clients use to WSM_API_ALLOWED_HOSTS"
            await send_error(send, 400, "invalid_host", detail, close=True)
            return
        await self.app(scope, receive, send)
