"""Websocket origin check: only pages of this very site may open a socket.

Browsers send the session cookie with a websocket handshake from any page of the same
*site*, and a site ignores ports: a page served at ``http://<host>:3000`` (another app on
the same machine) is same-site with Corral at ``http://<host>:8000``, gets its cookie, and
could drive a signed-in person's chats. Channels' ``AllowedHostsOriginValidator`` compares
host names only, so it lets such a page in. This check compares the whole origin, scheme
and port included, with the origin the request itself was made to, plus the exact entries
of ``CSRF_TRUSTED_ORIGINS``. Anything else, a missing ``Origin`` or ``null`` included, is
closed before it is accepted, which the server answers with HTTP 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # scheme, host (lowercase, IPv6 in brackets), port


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` as a comparable tuple with the default port filled in, so
    ``http://h`` equals ``http://h:80``; None for anything else (``null``, a path, user
    info, another scheme, a malformed host)."""
    scheme, sep, netloc = value.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS or any(c in netloc for c in "/?#@\\"):
        return None
    return _with_port(netloc, scheme)


def _with_port(netloc: str, scheme: str) -> Origin | None:
    host, port = split_domain_port(netloc)  # lowercased; "" when malformed
    if not host:
        return None
    return scheme, host, int(port) if port else DEFAULT_PORTS[scheme]


def request_scheme(scope: Scope, headers: dict[str, str]) -> str:
    """``https`` for ``wss`` or when the configured TLS proxy header says so, else ``http``:
    the rule of Django's ``request.is_secure()``."""
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        meta_name, secure_value = proxy_header
        name = meta_name.removeprefix("HTTP_").replace("_", "-").lower()
        if name in headers:
            forwarded = headers[name].split(",", 1)[0].strip()
            return "https" if forwarded == secure_value else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def allowed_hosts() -> list[str]:
    """ALLOWED_HOSTS, with Django's own fallback in DEBUG when it is empty."""
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return list(settings.ALLOWED_HOSTS)


def allowed_origins(scope: Scope, headers: dict[str, str]) -> set[Origin]:
    """The site's own origin for this request (when its Host is an allowed host) and every
    exact ``CSRF_TRUSTED_ORIGINS`` entry (wildcard entries are not honoured here)."""
    origins: set[Origin] = set()
    host = headers.get("host", "")
    domain, _ = split_domain_port(host)
    if domain and validate_host(domain, allowed_hosts()):
        own = _with_port(host, request_scheme(scope, headers))
        if own is not None:
            origins.add(own)
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        if "*" not in entry and (trusted := parse_origin(entry)) is not None:
            origins.add(trusted)
    return origins


def decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI headers by lowercase name. A repeated Host or Origin is dropped: which one the
    browser meant is unknowable, and a missing one is refused."""
    headers: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key in headers:
            repeated.add(key)
        headers[key] = value.decode("latin-1")
    for key in repeated & {"host", "origin"}:
        del headers[key]
    return headers


def origin_allowed(scope: Scope) -> bool:
    """Whether a websocket handshake comes from a page of this site."""
    headers = decode_headers(scope.get("headers", []))
    origin = parse_origin(headers.get("origin", ""))
    return origin is not None and origin in allowed_origins(scope, headers)


async def refuse(receive: Receive, send: Send) -> None:
    """Close before accepting: the server answers the handshake with HTTP 403. Nothing
    else runs for a refused socket (no session lookup, no channel layer)."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


class SameOriginWebsocketMiddleware:
    """ASGI middleware: a websocket whose ``Origin`` is not exactly one of this site's own
    origins is refused at the handshake (HTTP 403); everything else passes through."""

    def __init__(self, application: ASGIApp) -> None:
        self.application = application

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            await refuse(receive, send)
            return
        await self.application(scope, receive, send)
