"""The server reads no request body bigger than Corral's largest legitimate one (one upload
chunk or one conversation file): a bigger one gets 413 before Django spools it to disk,
whether its size is declared or it arrives in chunks."""

from __future__ import annotations

import socket

import pytest

from tests.e2e.helpers import login_cookie
from webui import config

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


def test_a_declared_body_over_the_cap_is_refused_before_it_is_sent(web_server, alice):
    head = (
        "POST /import/ HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{web_server.port}\r\n"
        f"Cookie: {login_cookie(alice)}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {config.MAX_REQUEST_BYTES + 1}\r\n\r\n"
    )
    response = _exchange(web_server.port, head, [])  # not one byte of the body sent
    assert response.startswith(b"HTTP/1.1 413")
    assert f"larger than {config.MAX_REQUEST_BYTES:,} bytes".encode() in response


def test_a_chunked_body_over_the_cap_is_cut_off(web_server, alice):
    head = (
        "POST /import/ HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{web_server.port}\r\n"
        f"Cookie: {login_cookie(alice)}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = 1024 * 1024
    count = config.MAX_REQUEST_BYTES // piece + 3  # bounded: a few MiB past the cap
    parts = [f"{piece:x}\r\n".encode() + b"a" * piece + b"\r\n" for _ in range(count)]
    response = _exchange(web_server.port, head, [*parts, b"0\r\n\r\n"])
    assert response.startswith(b"HTTP/1.1 413")
