"""The one module that publishes to the channel layer, shared by the web side and the
workers: channel-group names, the replay buffer of streamed deltas, and the publisher.

Everything sent here is a hint: the database holds the truth and a client can always
rebuild from it. Publishing never blocks the caller: events go to one background thread
per process that owns an event loop, so a generation loop never waits on Redis, and a
single sender coroutine keeps events in order.

Each streamed delta is also appended to a short-lived Redis list per answer, so a client
that (re)connects gets the database checkpoint plus every delta after it: no gap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import redis
from channels.layers import get_channel_layer
from django.db import transaction

from webui.chat import redis_client
from webui.chat.models import Message
from webui.chat.selectors import MessagePayload, message_payload

logger = logging.getLogger("corral.publish")

REPLAY_TTL_S = 3600


def group_name(conversation_id: int) -> str:
    return f"conversation.{conversation_id}"


def user_group_name(user_id: int) -> str:
    """Every open socket of one person: account changes reach them all."""
    return f"user.{user_id}"


def replay_key(message_id: int, attempt: int) -> str:
    return f"corral:deltas:{message_id}:{attempt}"


class DeltaEvent(TypedDict):
    type: Literal["message.delta"]
    message: int
    attempt: int
    seq: int
    offset: int
    text: str


class StateEvent(TypedDict):
    """A message changed."""

    type: Literal["message.state"]
    message: MessagePayload


class QueuePlace(TypedDict):
    """Where a waiting answer stands: ``position`` 1 is next; ``eta_s`` is None when no
    estimate can be made, and ``worker`` is False when no worker of the pool is alive."""

    pool: str
    position: int
    eta_s: int | None
    worker: bool


class QueueEvent(QueuePlace):
    type: Literal["message.queue"]
    message: int


class ChangedEvent(TypedDict):
    """The branch on screen changed: clients redraw from a snapshot."""

    type: Literal["conversation.changed"]


class TitleEvent(TypedDict):
    type: Literal["conversation.title"]
    conversation: int
    title: str


class RevokedEvent(TypedDict):
    """Close the person's sockets (those of ``session``, or all but ``keep_session``)."""

    type: Literal["account.revoked"]
    reason: str
    session: str | None
    keep_session: str | None


# What goes to a conversation's group, and to a person's group.
ConversationEvent = StateEvent | QueueEvent | ChangedEvent
UserEvent = TitleEvent | RevokedEvent


@dataclass(frozen=True)
class Delta:
    conversation_id: int
    message_id: int
    attempt: int
    seq: int
    offset: int
    text: str

    def as_event(self) -> DeltaEvent:
        return {
            "type": "message.delta",
            "message": self.message_id,
            "attempt": self.attempt,
            "seq": self.seq,
            "offset": self.offset,
            "text": self.text,
        }


# How long one event may take to reach the channel layer before it is dropped (a hint:
# clients resync from the database).
PUBLISH_TIMEOUT_S = 2.0


class _Sender:
    """A daemon thread with its own event loop and one ordered queue of events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] | None = None
        self._pending = 0
        self._done = threading.Condition()

    def _start(self) -> None:
        # Per process: a forked Celery pool child must not reuse its parent's thread.
        with self._lock:
            if self._pid == os.getpid():
                return
            ready = threading.Event()
            self._pending = 0
            threading.Thread(
                target=self._run, args=(ready,), name="corral-publish", daemon=True
            ).start()
            ready.wait()
            self._pid = os.getpid()

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._queue = asyncio.Queue()
        ready.set()
        self._loop.run_until_complete(self._drain())

    async def _drain(self) -> None:
        assert self._queue is not None
        layer = get_channel_layer()
        replay = redis_client.async_client()
        while True:
            kind, payload = await self._queue.get()
            try:
                if kind == "delta":
                    delta: Delta = payload
                    key = replay_key(delta.message_id, delta.attempt)
                    entry = json.dumps(
                        {"seq": delta.seq, "offset": delta.offset, "text": delta.text}
                    )
                    async with replay.pipeline(transaction=False) as pipe:
                        pipe.rpush(key, entry)
                        pipe.expire(key, REPLAY_TTL_S)
                        await pipe.execute()
                    await self._group_send(
                        layer, group_name(delta.conversation_id), delta.as_event()
                    )
                else:
                    group, event = payload
                    await self._group_send(layer, group, event)
            except Exception:  # a hint was lost; clients resync from the database
                logger.warning("could not publish %s", kind, exc_info=True)
            finally:
                with self._done:
                    self._pending -= 1
                    self._done.notify_all()

    @staticmethod
    async def _group_send(layer: Any, group: str, event: Any) -> None:
        # The channel layer's connections have no read timeout: a Redis that accepts and
        # never answers would hold every later event of this process behind this one.
        await asyncio.wait_for(layer.group_send(group, event), PUBLISH_TIMEOUT_S)

    def submit(self, kind: str, payload: Any) -> None:
        self._start()
        assert self._loop is not None and self._queue is not None
        with self._done:
            self._pending += 1
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, payload))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted event was sent (tests and shutdown use it)."""
        if self._pid != os.getpid():
            return True
        with self._done:
            return self._done.wait_for(lambda: self._pending == 0, timeout)


_sender = _Sender()


def publish_delta(delta: Delta) -> None:
    _sender.submit("delta", delta)


def publish_event(conversation_id: int, event: ConversationEvent) -> None:
    """Send ``event`` to the conversation's group once the current transaction commits."""
    transaction.on_commit(
        lambda: _sender.submit("event", (group_name(conversation_id), event)), robust=True
    )


def publish_message(message: Message) -> None:
    """Tell the conversation's clients that ``message`` changed (after commit)."""
    publish_event(
        message.conversation_id, {"type": "message.state", "message": message_payload(message)}
    )


def publish_user_event(user_id: int, event: UserEvent) -> None:
    """Send ``event`` to every socket of one person once the current transaction commits."""
    transaction.on_commit(
        lambda: _sender.submit("event", (user_group_name(user_id), event)), robust=True
    )


async def read_replay(message_id: int, attempt: int, after_seq: int) -> list[dict[str, Any]]:
    """Deltas of one attempt at ``message_id`` with seq > ``after_seq``, oldest first."""
    client = redis_client.async_client()
    try:
        raw = await client.lrange(replay_key(message_id, attempt), 0, -1)
    finally:
        await client.aclose()
    entries = [json.loads(item) for item in raw]
    return [entry for entry in entries if entry["seq"] > after_seq]


def reset_replay(message_id: int, attempt: int) -> None:
    """Start an attempt's replay buffer empty (ids repeat when a database is reset)."""
    try:
        redis_client.shared().delete(replay_key(message_id, attempt))
    except redis.RedisError:
        logger.warning("could not reset the replay buffer of %s", message_id, exc_info=True)


def delivered_after(message_id: int, attempt: int, seq: int, offset: int) -> tuple[str, int]:
    """The text an attempt streamed after its checkpoint (``seq``, ``offset`` characters),
    as far as its replay buffer holds it without a hole, and the seq it reaches. Clients
    may have shown it: a continued answer goes on from there, not from the checkpoint."""
    try:
        raw = redis_client.shared().lrange(replay_key(message_id, attempt), 0, -1)
    except redis.RedisError:
        logger.warning("could not read the replay buffer of %s", message_id, exc_info=True)
        return "", seq
    text = ""
    for entry in sorted((json.loads(item) for item in raw), key=lambda e: e["seq"]):
        if entry["seq"] <= seq:
            continue
        if entry["seq"] != seq + 1 or entry["offset"] != offset + len(text):
            break
        text += entry["text"]
        seq = entry["seq"]
    return text, seq


def flush(timeout: float = 5.0) -> bool:
    return _sender.flush(timeout)


def delete_replays(pairs: list[tuple[int, int]]) -> None:
    """Drop the replay buffers of these (message id, attempt) pairs (a deleted
    conversation's); best-effort, as they expire within REPLAY_TTL_S anyway."""
    if not pairs:
        return
    try:
        keys = [replay_key(message_id, attempt) for message_id, attempt in pairs]
        redis_client.shared().delete(*keys)
    except redis.RedisError:
        logger.warning("could not delete %d replay buffers", len(pairs), exc_info=True)
