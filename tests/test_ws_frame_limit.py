"""The server reads no websocket message bigger than a longest chat message needs
(uvicorn --ws-max-size = WS_MAX_BYTES): a bigger one closes the socket (1009) before any
of it reaches Corral, so nothing of it is parsed, stored or echoed back."""

from __future__ import annotations

import json
import re

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.helpers import login_cookie
from tests.test_compose import DOCKERFILE, load_compose, option, service_commands
from webui import config
from webui.chat.models import Conversation
from webui.run import processes

MESSAGE_TOO_BIG = 1009


def test_limit_fits_a_longest_message_and_no_more():
    # Every character of a longest message in 4-byte UTF-8, plus the JSON around it.
    assert config.WS_MAX_BYTES >= config.MAX_MESSAGE_CHARS * 4 + 1024
    assert config.WS_MAX_BYTES < 1024 * 1024  # far below uvicorn's 16 MiB default
    argv = processes.web_argv("127.0.0.1", 8000)
    assert argv[argv.index("--ws-max-size") + 1] == str(config.WS_MAX_BYTES)


def test_containers_start_the_server_with_the_same_limit():
    # compose.yaml and the Dockerfile cannot import webui.config: they spell out its default.
    default = str(config.MAX_MESSAGE_CHARS * 4 + 64 * 1024)
    web = load_compose()["services"]["web"]
    uvicorn = next(argv for argv in service_commands(web) if argv[0] == "uvicorn")
    assert option(uvicorn, "--ws-max-size") == "${CORRAL_WS_MAX_BYTES:-" + default + "}"
    cmd = re.search(r'^CMD \[(.*"uvicorn".*)\]$', DOCKERFILE.read_text(), re.M)
    assert cmd, "the cpu image's CMD does not start uvicorn"
    assert option(json.loads(f"[{cmd.group(1)}]"), "--ws-max-size") == default


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("compression", [None, "deflate"])
def test_oversized_frame_closes_the_socket(web_server, alice, compression):
    """With permessage-deflate, 190 KiB of one letter travel as a few hundred bytes: the
    limit holds on the decompressed size, so a compression bomb is refused too."""
    conversation = Conversation.objects.create(owner=alice)
    received = 0
    with connect(
        f"ws://127.0.0.1:{web_server.port}/ws/conversations/{conversation.pk}/",
        origin=web_server.url,
        additional_headers={"Cookie": login_cookie(alice)},
        compression=compression,
        open_timeout=10,
    ) as ws:
        snapshot = ws.recv(timeout=10)
        assert json.loads(snapshot)["type"] == "snapshot"
        try:
            ws.send("x" * (config.WS_MAX_BYTES + 1))
            while True:
                received += len(ws.recv(timeout=10))
        except ConnectionClosed as exc:
            closed = exc
    assert closed.rcvd is not None and closed.rcvd.code == MESSAGE_TOO_BIG, closed
    assert received < 4096
