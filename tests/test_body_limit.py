"""The server reads no request body bigger than Corral's largest legitimate one (one upload
chunk or one conversation file): a bigger one gets 413 before Django spools it to disk,
whether its size is declared or it arrives in chunks."""

from __future__ import annotations

import socket

import pytest

from tests.e2e.helpers import login_cookie
from webui import config
from webui.body_limit import DRAIN_BYTES

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _exchange(port: int, head: str, body_parts: list[bytes]) -> bytes:
    """Send a request, stopping early if the server answers and closes; its response."""
    response = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(head.encode())
            for part in body_parts:
                sock.sendall(part)
            while chunk := sock.recv(65536):
                response += chunk
        except OSError:  # closed on us: the rest was not read
            pass
    return response


def _import_head(port: int, user, length: int | None) -> str:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        "POST /import/ HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Cookie: {login_cookie(user)}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"{size}\r\n\r\n"
    )


def test_a_declared_body_far_over_the_cap_is_refused_before_it_is_sent(web_server, alice):
    length = config.MAX_REQUEST_BYTES + DRAIN_BYTES + 1
    response = _exchange(web_server.port, _import_head(web_server.port, alice, length), [])
    assert response.startswith(b"HTTP/1.1 413")  # not one byte of the body was sent
    assert f"larger than {config.MAX_REQUEST_BYTES:,} bytes".encode() in response


def test_a_body_a_little_over_the_cap_gets_a_clean_413(web_server, alice):
    """A file a few MiB too big (a browser sends it whole before reading the answer):
    the server reads and drops it, then answers, so the client sees the 413."""
    length = config.MAX_REQUEST_BYTES + 3 * 1024 * 1024
    piece = 1024 * 1024
    parts = [b"a" * piece] * (length // piece) + [b"a" * (length % piece)]
    response = _exchange(web_server.port, _import_head(web_server.port, alice, length), parts)
    assert response.startswith(b"HTTP/1.1 413")
    assert b"Connection: close" in response or b"connection: close" in response


def test_a_chunked_body_over_the_cap_is_cut_off(web_server, alice):
    piece = 1024 * 1024
    count = config.MAX_REQUEST_BYTES // piece + 3  # bounded: a few MiB past the cap
    parts = [f"{piece:x}\r\n".encode() + b"a" * piece + b"\r\n" for _ in range(count)]
    head = _import_head(web_server.port, alice, None)
    response = _exchange(web_server.port, head, [*parts, b"0\r\n\r\n"])
    assert response.startswith(b"HTTP/1.1 413")
