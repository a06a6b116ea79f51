"""A Redis that accepts connections and never answers (a hung server, a full network
buffer) must not freeze the worker: its calls give up within seconds."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from webui import config
from webui.chat import redis_client, stop_flags, wakeups


@pytest.fixture
def hung_redis(monkeypatch):
    """A server that takes connections and reads, but never replies."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    monkeypatch.setattr(config, "redis_url", lambda: f"redis://127.0.0.1:{port}/0")
    redis_client.shared.cache_clear()
    yield
    redis_client.shared.cache_clear()
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    server.close()


def within(seconds: float, call) -> object:
    """``call()``'s result, failing the test if it has not returned after ``seconds``."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {time.monotonic() - started:.0f} s"
    return result[0]


# Our timeout (2 s), with room for a busy machine; redis-py's own default (5 s) fails.
GIVES_UP_WITHIN_S = 4.5


def test_the_stop_check_gives_up_on_a_hung_redis(hung_redis):
    # The heartbeat asks this several times a second for every running answer.
    assert within(GIVES_UP_WITHIN_S, lambda: stop_flags.stop_requested(1, 1)) is False


def test_the_wake_up_count_gives_up_on_a_hung_redis(hung_redis):
    import redis

    def count() -> object:
        try:
            return wakeups.pending_wakeups("cpu")
        except redis.RedisError as exc:
            return exc

    assert isinstance(within(GIVES_UP_WITHIN_S, count), redis.TimeoutError)
