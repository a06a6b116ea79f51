"""The one publisher (webui.chat.streams) drops what it cannot send instead of holding
every later event behind it: a Redis that accepts connections and never answers costs
each event at most PUBLISH_TIMEOUT_S, not the worker's whole stream."""

from __future__ import annotations

import socket
import threading
import time

from channels_redis.pubsub import RedisPubSubChannelLayer

from webui.chat import streams


def test_an_event_to_a_silent_redis_is_dropped_not_waited_for(monkeypatch):
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept_and_say_nothing() -> None:
        silent.settimeout(10)
        try:
            while len(held) < 4:
                held.append(silent.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    layer = RedisPubSubChannelLayer(hosts=[f"redis://127.0.0.1:{silent.getsockname()[1]}/0"])
    monkeypatch.setattr(streams, "get_channel_layer", lambda: layer)
    monkeypatch.setattr(streams, "PUBLISH_TIMEOUT_S", 0.5)
    sender = streams._Sender()  # its own thread and loop, with the silent layer
    try:
        started = time.monotonic()
        for n in range(3):
            sender.submit("event", ("conversation.1", {"type": "conversation.changed", "n": n}))
        assert sender.flush(timeout=5), "the publisher is stuck behind a silent Redis"
        assert time.monotonic() - started < 3
    finally:
        for connection in held:
            connection.close()
        silent.close()
