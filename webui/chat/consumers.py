"""Websocket edge: parse the client's message, call one service, send the result.

Protocol (JSON; client messages are validated in webui.chat.client_messages):
  client -> {"type": "send", "text": str, "model": int | null, "request": str?}
            {"type": "stop", "message": int}
            {"type": "sync"}                      # ask for a fresh snapshot
            {"type": "regenerate", "message": answer id, "model": int | null}
            {"type": "edit", "message": question id, "text": str, "model": int | null,
             "request": str?}
            {"type": "version", "message": id}    # show the branch through this version
  server -> {"type": "snapshot", "conversation": {...}, "messages": [...]}
            {"type": "delta", "message": id, "seq": n, "offset": chars, "text": str}
            {"type": "message", "message": {...}}  # a message's full state
            {"type": "queue", "message": id, "pool", "position", "eta_s"}
            {"type": "accepted", "request": str}  # the send/edit was saved: clear the box
            {"type": "error", "message": str, "request": str?}
            {"type": "title", "conversation": id, "title": str}
            {"type": "signed_out", "reason": str}  # then close 4401 (or 4403)

The socket is accepted before it is refused, so the close code reaches the browser (a
close before accept becomes a bare HTTP 403): 4401 signed out, 4403 not allowed (waiting
for approval), 4404 no such conversation. Every client message re-checks that the
session still belongs to an active, approved person; account changes also close open
sockets at once through the person's group.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs

import redis
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError

from webui.accounts.models import Profile
from webui.accounts.selectors import session_user
from webui.chat import client_messages, metrics, selectors, services, streams
from webui.chat.client_messages import BadClientMessage
from webui.chat.models import Conversation, Message

logger = logging.getLogger("corral.consumers")

# What a person reads when the database is down: nothing of the driver's message (it names
# hosts and databases), which goes to the log.
DATABASE_DOWN = "Corral cannot reach its database right now; nothing was changed. Try again soon."

CLOSE_SIGNED_OUT = 4401
CLOSE_NOT_ALLOWED = 4403
CLOSE_NOT_FOUND = 4404


class ConversationConsumer(AsyncJsonWebsocketConsumer):
    conversation_id: int
    group: str
    user_group: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # message id -> (attempt, seq) of the last delta this client has of a running answer
        self._sent_seq: dict[int, tuple[int, int]] = {}

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Each message straight to its handler. Channels first closes stale database
        connections on the one database thread, so every event (a delta, a state) waited
        there behind the sends queued in this process: in a burst of 32 sends, clients got
        their deltas about half a second late. Every database call here goes through
        ``database_sync_to_async``, which closes stale connections itself."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        user = self.scope["user"]
        if user.is_authenticated:
            # Joined before the socket opens: an account change from then on reaches it.
            self.user_group = streams.user_group_name(user.pk)
            await self.channel_layer.group_add(self.user_group, self.channel_name)
        await self.accept()  # before any refusal, so the browser learns the close code
        if not user.is_authenticated:
            await self._sign_out("You are signed out.")
            return
        # Fresh from the database: the account may have changed since the handshake.
        user = await database_sync_to_async(session_user)(
            user.pk, self.scope["session"].session_key
        )
        if user is None:
            waiting = await database_sync_to_async(_waiting_for_approval)(self.scope["user"])
            if waiting:
                await self._sign_out("Your account is waiting for approval.", CLOSE_NOT_ALLOWED)
            else:
                await self._sign_out("You were signed out.")
            return
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        conversation = await database_sync_to_async(selectors.get_conversation_for)(
            user, self.conversation_id
        )
        if conversation is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Join before reading the database, so nothing published in between is missed.
        self.group = streams.group_name(self.conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        metrics.OPEN_SOCKETS.opened()
        self.counted = True
        await self.send_snapshot(conversation, resume=_parse_resume(self.scope))

    async def _sign_out(self, reason: str, code: int = CLOSE_SIGNED_OUT) -> None:
        await self.send_json({"type": "signed_out", "reason": reason})
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            metrics.OPEN_SOCKETS.closed()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if hasattr(self, "user_group"):
            await self.channel_layer.group_discard(self.user_group, self.channel_name)

    async def send_snapshot(
        self,
        conversation: Conversation | None = None,
        resume: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        """The database's view. For an answer the client resumes (it sent the attempt and
        the last seq it has), the text it has is not sent again: just the deltas after."""
        if conversation is None:
            conversation = await database_sync_to_async(selectors.get_conversation_for)(
                self.scope["user"], self.conversation_id
            )
            if conversation is None:
                await self.close(code=CLOSE_NOT_FOUND)
                return
        snapshot = await database_sync_to_async(selectors.conversation_snapshot)(conversation)
        missed: list[dict[str, Any]] = []
        for message in snapshot["messages"]:
            if message["status"] != Message.Status.RUNNING:
                continue  # a queued answer has no text yet (a re-queued one, no longer)
            have = (resume or {}).get(message["id"])
            if have and have[0] == message["attempt"]:
                deltas = await _missed_deltas(message, after_seq=have[1])
                if deltas is not None:
                    message.update(content=None, seq=have[1], resumed=True)
                    missed.extend(deltas)
                    continue
            await _add_replayed_deltas(message)
        await self.send_json(snapshot)
        for message in snapshot["messages"]:
            if message["status"] == Message.Status.RUNNING:
                self._sent_seq[message["id"]] = (message["attempt"], message["seq"])
        for delta in missed:
            await self._send_delta(delta)

    async def _send_delta(self, delta: dict[str, Any]) -> None:
        """Each delta once: one published while the snapshot was read comes both from the
        replay buffer and live, and the second copy is dropped here."""
        attempt, seq = self._sent_seq.get(delta["message"], (None, 0))
        if attempt == delta["attempt"] and delta["seq"] <= seq:
            return
        self._sent_seq[delta["message"]] = (delta["attempt"], delta["seq"])
        await self.send_json({"type": "delta", **delta})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not hasattr(self, "group"):
            return  # refused at connect; the close is on its way
        try:
            raw = json.loads(text_data) if text_data is not None else None
            content = client_messages.parse(raw)
        except (ValueError, BadClientMessage) as exc:
            reason = str(exc) if isinstance(exc, BadClientMessage) else "Message not understood."
            await self.send_json({"type": "error", "message": reason})
            return
        try:
            await self.receive_json(content)
        except (OperationalError, InterfaceError):  # the database is down or restarting
            # The socket stays open: deltas still arrive through Redis meanwhile.
            logger.warning("a socket message failed: database error", exc_info=True)
            await self._error(DATABASE_DOWN, getattr(content, "request", None))

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Every message re-checks the person: a signed-out, deactivated or deleted
        # account's old socket can never queue, stop or read anything.
        user = await database_sync_to_async(session_user)(
            self.scope["user"].pk, self.scope["session"].session_key
        )
        if user is None:
            await self._sign_out("You were signed out.")
            return
        if isinstance(content, client_messages.Send):
            await self._send_message(user, content)
        elif isinstance(content, client_messages.Stop):
            await self._stop(user, content)
        elif isinstance(
            content, client_messages.Regenerate | client_messages.Edit | client_messages.Version
        ):
            await self._change_branch(user, content)
        elif isinstance(content, client_messages.Sync):
            # Re-join first (idempotent): the layer may have lost its subscriptions.
            await self.channel_layer.group_add(self.group, self.channel_name)
            await self.channel_layer.group_add(self.user_group, self.channel_name)
            await self.send_snapshot()

    async def _send_message(self, user: Any, content: client_messages.Send) -> None:
        try:
            await database_sync_to_async(services.send_message)(
                user=user,
                conversation_id=self.conversation_id,
                text=content.text,
                model_id=content.model,
            )
        except ValidationError as exc:
            await self._error(" ".join(exc.messages), content.request)
        except Conversation.DoesNotExist:
            await self.close(code=CLOSE_NOT_FOUND)
        else:
            await self.send_json({"type": "accepted", "request": content.request})

    async def _change_branch(
        self,
        user: Any,
        content: client_messages.Regenerate | client_messages.Edit | client_messages.Version,
    ) -> None:
        try:
            if isinstance(content, client_messages.Regenerate):
                await database_sync_to_async(services.regenerate)(
                    user=user, message_id=content.message, model_id=content.model
                )
            elif isinstance(content, client_messages.Edit):
                await database_sync_to_async(services.edit_message)(
                    user=user, message_id=content.message, text=content.text, model_id=content.model
                )
                await self.send_json({"type": "accepted", "request": content.request})
            else:
                await database_sync_to_async(services.show_version)(
                    user=user, message_id=content.message
                )
        except ValidationError as exc:
            request = content.request if isinstance(content, client_messages.Edit) else None
            edit = content.message if isinstance(content, client_messages.Edit) else None
            await self._error(" ".join(exc.messages), request, edit=edit)
        except Message.DoesNotExist:
            await self._error("No such message.")

    async def _stop(self, user: Any, content: client_messages.Stop) -> None:
        try:
            await database_sync_to_async(services.stop_answer)(
                user=user, message_id=content.message
            )
        except Message.DoesNotExist:
            await self._error("No such answer.")
        except redis.RedisError:
            await self._error("Could not reach the queue to stop it; try again.")

    async def _error(self, message: str, request: str | None = None, **extra: Any) -> None:
        await self.send_json({"type": "error", "message": message, "request": request, **extra})

    # Channel layer events ------------------------------------------------------------

    async def message_delta(self, event: dict[str, Any]) -> None:
        await self._send_delta(
            {
                "message": event["message"],
                "attempt": event["attempt"],
                "seq": event["seq"],
                "offset": event["offset"],
                "text": event["text"],
            }
        )

    async def conversation_changed(self, event: dict[str, Any]) -> None:
        await self.send_snapshot()

    async def message_queue(self, event: dict[str, Any]) -> None:
        await self.send_json({**event, "type": "queue"})

    async def message_state(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "message", "message": event["message"]})

    async def conversation_title(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {"type": "title", "conversation": event["conversation"], "title": event["title"]}
        )

    async def account_revoked(self, event: dict[str, Any]) -> None:
        """The person's rights changed: close this socket unless the event spares it."""
        session_key = self.scope["session"].session_key
        if event.get("session") and event["session"] != session_key:
            return
        if event.get("keep_session") and event["keep_session"] == session_key:
            return
        await self._sign_out(event.get("reason") or "You were signed out.")


def _waiting_for_approval(user: Any) -> bool:
    """An active account that an admin has not approved yet (not signed out)."""
    return Profile.objects.filter(user_id=user.pk, approved=False, user__is_active=True).exists()


def _parse_resume(scope: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """``?resume=<message>.<attempt>.<seq>,...`` from a reconnecting client."""
    query = parse_qs(scope.get("query_string", b"").decode())
    resume: dict[int, tuple[int, int]] = {}
    for item in ",".join(query.get("resume", [])).split(",")[:20]:
        parts = item.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            resume[int(parts[0])] = (int(parts[1]), int(parts[2]))
    return resume


async def _missed_deltas(message: dict[str, Any], after_seq: int) -> list[dict] | None:
    """The deltas after ``after_seq``, if the replay buffer still holds every one of them
    (else None: the client gets the full text instead)."""
    replay = await streams.read_replay(message["id"], message["attempt"], after_seq=after_seq)
    expected = after_seq + 1
    for delta in replay:
        if delta["seq"] != expected:
            return None
        expected += 1
    if expected - 1 < message["seq"]:  # the checkpoint is past what the buffer holds
        return None
    return [{"message": message["id"], "attempt": message["attempt"], **d} for d in replay]


async def _add_replayed_deltas(message: dict[str, Any]) -> None:
    """Bring a running answer from its last checkpoint up to the last published delta."""
    replay = await streams.read_replay(message["id"], message["attempt"], after_seq=message["seq"])
    for delta in replay:
        if delta["offset"] != len(message["content"]):
            break  # a gap in the buffer (e.g. Redis restarted): stay at the checkpoint
        message["content"] += delta["text"]
        message["seq"] = delta["seq"]
