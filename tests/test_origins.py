"""Websockets open only from this site's own pages: the whole origin (scheme, host, port)
must match, as a browser reports it. A page on another port of the same host is the attack:
it is same-site, so the browser sends Corral's session cookie with its handshake."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import free_port
from tests.e2e.helpers import login_cookie
from webui.asgi import application
from webui.chat.models import Conversation
from webui.origins import origin_allowed, parse_origin


def scope(host: str | None, origin: str | None, scheme: str = "ws", **extra: str) -> dict:
    headers = [(b"host", host.encode())] if host is not None else []
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    return {"type": "websocket", "scheme": scheme, "path": "/ws/", "headers": headers}


# --------------------------------------------------------------------------------------------
# The rule, case by case (ALLOWED_HOSTS is the default: 127.0.0.1, localhost, [::1])


@pytest.mark.parametrize(
    ("host", "origin", "allowed"),
    [
        ("127.0.0.1:8000", "http://127.0.0.1:8000", True),
        ("127.0.0.1:8000", "http://127.0.0.1:3000", False),  # another port: same site
        ("127.0.0.1:8000", "http://127.0.0.1", False),
        ("127.0.0.1:8000", "https://127.0.0.1:8000", False),  # another scheme
        ("127.0.0.1:8000", "http://localhost:8000", False),  # another host, also allowed
        ("127.0.0.1:8000", None, False),  # no Origin at all
        ("127.0.0.1:8000", "null", False),  # sandboxed frames, file:// pages
        ("127.0.0.1:8000", "", False),
        ("127.0.0.1:8000", "http://127.0.0.1:8000/chat", False),  # not an origin
        ("127.0.0.1:8000", "http://user@127.0.0.1:8000", False),
        ("127.0.0.1:8000", "ws://127.0.0.1:8000", False),
        ("127.0.0.1:8000", "HTTP://127.0.0.1:8000", True),  # case does not matter
        ("[::1]:8000", "http://[::1]:8000", True),  # IPv6
        ("[::1]:8000", "http://[::1]:8001", False),
        ("[::1]:8000", "http://[::2]:8000", False),
        ("localhost", "http://localhost:80", True),  # default ports are the same origin
        ("localhost:80", "http://localhost", True),
        ("localhost:80", "http://localhost:8080", False),
        ("evil.example:8000", "http://evil.example:8000", False),  # Host not allowed
        (None, "http://127.0.0.1:8000", False),  # no Host
        ("127.0.0.1:8000", "http://127.0.0.1:8000.evil.example", False),
    ],
)
def test_origin_must_be_the_sites_own(host, origin, allowed):
    assert origin_allowed(scope(host, origin)) is allowed


def test_wss_means_https_with_its_default_port():
    assert origin_allowed(scope("localhost", "https://localhost", scheme="wss"))
    assert origin_allowed(scope("localhost:443", "https://localhost", scheme="wss"))
    assert origin_allowed(scope("localhost:8443", "https://localhost:8443", scheme="wss"))
    assert not origin_allowed(scope("localhost:8443", "http://localhost:8443", scheme="wss"))
    assert not origin_allowed(scope("localhost", "http://localhost", scheme="wss"))


def test_tls_proxy_header_counts_only_when_configured(settings):
    behind_proxy = {"x-forwarded-proto": "https"}
    # Not configured: a client's header changes nothing.
    assert not origin_allowed(scope("localhost", "https://localhost", **behind_proxy))
    assert origin_allowed(scope("localhost", "http://localhost", **behind_proxy))
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert origin_allowed(scope("localhost", "https://localhost", **behind_proxy))
    assert not origin_allowed(scope("localhost", "http://localhost", **behind_proxy))
    plain = {"x-forwarded-proto": "http"}
    assert origin_allowed(scope("localhost", "http://localhost", **plain))
    assert not origin_allowed(scope("localhost", "https://localhost", **plain))


def test_exact_csrf_trusted_origins_are_accepted(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://corral.example.com", "https://*.example.org"]
    # A proxy that forwards another Host: the trusted origin is still accepted...
    assert origin_allowed(scope("127.0.0.1:8000", "https://corral.example.com"))
    assert origin_allowed(scope("127.0.0.1:8000", "https://corral.example.com:443"))
    # ...exactly: not another scheme or port, and no wildcards.
    assert not origin_allowed(scope("127.0.0.1:8000", "http://corral.example.com"))
    assert not origin_allowed(scope("127.0.0.1:8000", "https://corral.example.com:8443"))
    assert not origin_allowed(scope("127.0.0.1:8000", "https://chat.example.org"))


def test_repeated_origin_or_host_is_refused():
    doubled = scope("127.0.0.1:8000", "http://127.0.0.1:8000")
    doubled["headers"].append((b"origin", b"http://127.0.0.1:3000"))
    assert not origin_allowed(doubled)
    doubled = scope("127.0.0.1:8000", "http://127.0.0.1:8000")
    doubled["headers"].append((b"host", b"127.0.0.1:3000"))
    assert not origin_allowed(doubled)


def test_parse_origin_normalizes_default_ports():
    assert parse_origin("http://Example.COM") == ("http", "example.com", 80)
    assert parse_origin("https://example.com:443") == ("https", "example.com", 443)
    assert parse_origin("http://[::1]:8000") == ("http", "[::1]", 8000)
    assert parse_origin("null") is None
    assert parse_origin("http://example.com:") is None


# --------------------------------------------------------------------------------------------
# Through the ASGI application in process (Channels' test communicator)


def handshake(origin: str | None, cookie: str, conversation_id: int) -> tuple[bool, str | None]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"cookie", cookie.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))

    async def run() -> tuple[bool, str | None]:
        comm = WebsocketCommunicator(
            application, f"/ws/conversations/{conversation_id}/", headers=headers
        )
        connected, _ = await comm.connect(timeout=5)
        first = None
        if connected:
            first = json.loads(await comm.receive_from(timeout=5))["type"]
        await comm.disconnect()
        return connected, first

    return async_to_sync(run)()


@pytest.mark.django_db(transaction=True)
def test_application_accepts_only_its_own_origin(alice):
    conversation = Conversation.objects.create(owner=alice)
    cookie = login_cookie(alice)
    assert handshake("http://127.0.0.1:8000", cookie, conversation.pk) == (True, "snapshot")
    for origin in ("http://127.0.0.1:3000", "https://127.0.0.1:8000", "null", None):
        assert handshake(origin, cookie, conversation.pk) == (False, None), origin


# --------------------------------------------------------------------------------------------
# Through the real server (uvicorn), as a browser would connect


def ws_connect(web_server, conversation_id: int, origin: str, cookie: str):
    return connect(
        f"ws://127.0.0.1:{web_server.port}/ws/conversations/{conversation_id}/",
        origin=origin,
        additional_headers={"Cookie": cookie},
        open_timeout=10,
    )


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_real_server_refuses_a_page_on_another_port(web_server, alice):
    conversation = Conversation.objects.create(owner=alice)
    cookie = login_cookie(alice)

    with ws_connect(web_server, conversation.pk, web_server.url, cookie) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "snapshot"

    other_port = free_port()
    for origin in (f"http://127.0.0.1:{other_port}", f"https://127.0.0.1:{web_server.port}"):
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(web_server, conversation.pk, origin, cookie)
        assert refused.value.response.status_code == 403, origin
