"""A websocket client for end-to-end tests, reconciling the stream as the browser does."""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.test import Client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect


def login_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


ACTIVE = ("queued", "running")


@dataclass
class ChatClient:
    """Snapshot, then deltas that must line up (offset and seq); state events by version.

    With ``resilient=True`` it also does what chat.js does when things go wrong: reconnect
    when the socket drops, and ask for a snapshot on a gap or after a quiet spell.
    """

    ws_url: str
    origin: str
    cookie: str
    connection: ClientConnection | None = None
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    deltas: list[dict[str, Any]] = field(default_factory=list)
    queue_events: list[dict[str, Any]] = field(default_factory=list)
    gaps: int = 0
    # Why each gap was counted: the delta, and what the client knew of its message then.
    gap_log: list[str] = field(default_factory=list)
    recent: deque[dict[str, Any] | str] = field(default_factory=lambda: deque(maxlen=20))
    reconnects: int = 0
    resilient: bool = False

    @classmethod
    def open(
        cls, base_url: str, conversation_id: int, user, cookie: str = "", resilient: bool = False
    ) -> ChatClient:
        client = cls(
            ws_url=base_url.replace("http://", "ws://") + f"/ws/conversations/{conversation_id}/",
            origin=base_url,
            cookie=cookie or login_cookie(user),
            resilient=resilient,
        )
        client.connect()
        return client

    def connect(self, resume: bool = False) -> None:
        """Open the socket; with ``resume``, tell the server how far each active answer got
        (as chat.js does on reconnect), so it sends only what was missed."""
        url = self.ws_url
        have = [
            f"{m['id']}.{m['attempt']}.{m['seq']}"
            for m in self.messages.values()
            if m["status"] in ACTIVE and m["attempt"] > 0
        ]
        if resume and have:
            url += "?resume=" + ",".join(have)
        connection = connect(
            url,
            origin=self.origin,
            additional_headers={"Cookie": self.cookie},
            open_timeout=10,
        )
        self.connection = connection.__enter__()  # closed by close() / the with block
        self.receive()  # the snapshot

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, payload: dict[str, Any]) -> None:
        assert self.connection is not None
        self.connection.send(json.dumps(payload))

    def receive(self, timeout: float = 10) -> dict[str, Any]:
        assert self.connection is not None
        event = json.loads(self.connection.recv(timeout=timeout))
        kind = event["type"]
        # A delta is kept as it is (cheap); others are described now, as later deltas
        # change the message dicts they hold.
        self.recent.append(event if kind == "delta" else _brief(event))
        if kind == "snapshot":
            fresh = {m["id"]: m for m in event["messages"]}
            for message_id, message in fresh.items():
                known = self.messages.get(message_id)
                if message.get("resumed"):
                    message["content"], message["seq"] = known["content"], known["seq"]
                    continue
                _keep_streamed_text(message, known)
            self.messages = fresh
        elif kind == "message":
            message = event["message"]
            known = self.messages.get(message["id"])
            if not known or message["version"] >= known["version"]:
                # A state event read from the database before a snapshot, delivered after
                # it, has its version and less text: keep the text (chat.js does too).
                _keep_streamed_text(message, known)
                self.messages[message["id"]] = message
        elif kind == "queue":
            self.queue_events.append(event)
        elif kind == "delta":
            self.deltas.append(event)
            message = self.messages.get(event["message"])
            if message is None:
                self._gap(event, None)
            elif event["seq"] <= message["seq"] and event["attempt"] == message["attempt"]:
                pass  # already have it
            elif (
                event["attempt"] == message["attempt"]
                and event["offset"] == len(message["content"])
                and event["seq"] == message["seq"] + 1
            ):
                message["content"] += event["text"]
                message["seq"] = event["seq"]
            else:
                self._gap(event, message)
        return event

    def _gap(self, delta: dict[str, Any], known: dict[str, Any] | None) -> None:
        self.gaps += 1
        had = (
            None
            if known is None
            else {k: known.get(k) for k in ("status", "attempt", "seq", "version")}
            | {"chars": len(known["content"])}
        )
        self.gap_log.append(
            f"delta {delta['message']}.{delta['attempt']} seq {delta['seq']} offset "
            f"{delta['offset']}; the client had {had}; events before it: "
            + "; ".join(e if isinstance(e, str) else _brief(e) for e in list(self.recent)[:-1])
        )
        if self.resilient:
            self.send({"type": "sync"})

    def wait_until(self, predicate, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met; messages={self.messages}")
            try:
                self.receive(timeout=min(remaining, 3))
            except TimeoutError:
                if self.resilient:  # quiet while something is active: ask the database
                    self.send({"type": "sync"})
            except (ConnectionClosed, OSError):
                if not self.resilient:
                    raise
                self._reconnect(deadline)

    def _reconnect(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                self.connect(resume=True)
                self.reconnects += 1
                return
            except (ConnectionClosed, OSError, TimeoutError):
                time.sleep(0.3)

    def answer(self) -> dict[str, Any]:
        return [m for m in self.messages.values() if m["role"] == "assistant"][-1]

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def _keep_streamed_text(message: dict[str, Any], known: dict[str, Any] | None) -> None:
    """A snapshot or state event can be older than the deltas the client already applied
    (chat.js's keepStreamedText: a running answer's text only; a queued one's is what the
    database says, empty for an Ollama answer that starts anew)."""
    if (
        known
        and message["status"] == "running"
        and known["attempt"] == message["attempt"]
        and known["seq"] > message["seq"]
        and known["content"].startswith(message["content"])
    ):
        message["content"], message["seq"] = known["content"], known["seq"]


def _brief(event: dict[str, Any]) -> str:
    """One event, without its text, for a gap's log."""
    kind, message = event["type"], event.get("message")
    if kind == "snapshot":
        return "snapshot " + ", ".join(
            f"{m['id']}.{m['attempt']} {m['status']} seq {m['seq']} "
            f"{len(m.get('content') or '')} chars"
            for m in event["messages"]
        )
    if isinstance(message, dict):
        return (
            f"message {message['id']}.{message['attempt']} {message['status']} v"
            f"{message['version']} seq {message['seq']} {len(message['content'] or '')} chars"
        )
    if kind == "delta":
        return f"delta {message}.{event['attempt']} seq {event['seq']} offset {event['offset']}"
    return kind
