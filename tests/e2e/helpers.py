"""A small websocket client for end-to-end tests against the real ASGI server."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.test import Client
from websockets.sync.client import ClientConnection, connect


def login_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


@dataclass
class ChatClient:
    """Assembles answers the way the browser does: snapshot, then deltas by offset."""

    connection: ClientConnection
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    deltas: list[dict[str, Any]] = field(default_factory=list)
    gaps: int = 0

    @classmethod
    def open(cls, base_url: str, conversation_id: int, user, cookie: str = "") -> ChatClient:
        ws_url = base_url.replace("http://", "ws://") + f"/ws/conversations/{conversation_id}/"
        connection = connect(
            ws_url,
            origin=base_url,
            additional_headers={"Cookie": cookie or login_cookie(user)},
            open_timeout=10,
        )
        client = cls(connection.__enter__())  # closed by close() / the with block
        client.receive()  # the snapshot
        return client

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, payload: dict[str, Any]) -> None:
        self.connection.send(json.dumps(payload))

    def receive(self, timeout: float = 10) -> dict[str, Any]:
        event = json.loads(self.connection.recv(timeout=timeout))
        if event["type"] == "snapshot":
            self.messages = {m["id"]: m for m in event["messages"]}
        elif event["type"] == "message":
            self.messages[event["message"]["id"]] = event["message"]
        elif event["type"] == "delta":
            self.deltas.append(event)
            message = self.messages[event["message"]]
            in_step = (
                event["offset"] == len(message["content"]) and event["seq"] == message["seq"] + 1
            )
            if event["attempt"] == message["attempt"] and in_step:
                message["content"] += event["text"]
                message["seq"] = event["seq"]
            elif event["seq"] > message["seq"]:
                self.gaps += 1
        return event

    def wait_until(self, predicate, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met; messages={self.messages}")
            try:
                self.receive(timeout=min(remaining, 5))
            except TimeoutError:
                continue

    def answer(self) -> dict[str, Any]:
        return [m for m in self.messages.values() if m["role"] == "assistant"][-1]

    def close(self) -> None:
        self.connection.close()
