"""Websocket edge: parse the client's message, call one service, send the result.

Protocol (JSON):
  client -> {"type": "send", "text": str, "model": int | null}
            {"type": "stop", "message": int}
            {"type": "sync"}                      # ask for a fresh snapshot
            {"type": "regenerate", "message": answer id, "model": int | null}
            {"type": "edit", "message": question id, "text": str, "model": int | null}
            {"type": "version", "message": id}    # show the branch through this version
  server -> {"type": "snapshot", "conversation": {...}, "messages": [...]}
            {"type": "delta", "message": id, "seq": n, "offset": chars, "text": str}
            {"type": "message", "message": {...}}  # a message's full state
            {"type": "queue", "message": id, "pool", "position", "eta_s"}
            {"type": "error", "message": str, "text": str}
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.exceptions import ValidationError

from webui.chat import selectors, services
from webui.chat.models import Conversation, Message
from workers import publish

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class ConversationConsumer(AsyncJsonWebsocketConsumer):
    conversation_id: int
    group: str

    async def connect(self) -> None:
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        conversation = await database_sync_to_async(selectors.get_conversation_for)(
            user, self.conversation_id
        )
        if conversation is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Join before reading the database, so nothing published in between is missed.
        self.group = publish.group_name(self.conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_snapshot(conversation, resume=_parse_resume(self.scope))

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

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
        for delta in missed:
            await self.send_json({"type": "delta", **delta})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "send":
            await self._send_message(content)
        elif kind == "stop":
            await self._stop(content)
        elif kind in ("regenerate", "edit", "version"):
            await self._change_branch(kind, content)
        elif kind == "sync":
            # Re-join first: a restarted Redis forgot the group, and joining is idempotent.
            await self.channel_layer.group_add(self.group, self.channel_name)
            await self.send_snapshot()

    async def _send_message(self, content: dict[str, Any]) -> None:
        text = content.get("text")
        text = text if isinstance(text, str) else ""
        model_id = content.get("model")
        try:
            await database_sync_to_async(services.send_message)(
                user=self.scope["user"],
                conversation_id=self.conversation_id,
                text=text,
                model_id=int(model_id) if model_id not in (None, "") else None,
            )
        except ValidationError as exc:
            await self.send_json({"type": "error", "message": " ".join(exc.messages), "text": text})
        except (ValueError, TypeError):
            await self.send_json(
                {"type": "error", "message": "That model is not available.", "text": text}
            )
        except Conversation.DoesNotExist:
            await self.close(code=CLOSE_NOT_FOUND)

    async def _change_branch(self, kind: str, content: dict[str, Any]) -> None:
        user = self.scope["user"]
        text = content.get("text") if isinstance(content.get("text"), str) else ""
        try:
            message_id = int(content.get("message"))
            model_id = int(content["model"]) if content.get("model") not in (None, "") else None
            if kind == "regenerate":
                await database_sync_to_async(services.regenerate)(
                    user=user, message_id=message_id, model_id=model_id
                )
            elif kind == "edit":
                await database_sync_to_async(services.edit_message)(
                    user=user, message_id=message_id, text=text, model_id=model_id
                )
            else:
                await database_sync_to_async(services.show_version)(
                    user=user, message_id=message_id
                )
        except ValidationError as exc:
            await self.send_json(
                {
                    "type": "error",
                    "message": " ".join(exc.messages),
                    "text": text,
                    "edit": message_id if kind == "edit" else None,
                }
            )
        except (Message.DoesNotExist, ValueError, TypeError, KeyError):
            await self.send_json({"type": "error", "message": "No such message.", "text": ""})

    async def _stop(self, content: dict[str, Any]) -> None:
        try:
            await database_sync_to_async(services.stop_answer)(
                user=self.scope["user"], message_id=int(content.get("message"))
            )
        except (Message.DoesNotExist, ValueError, TypeError):
            await self.send_json({"type": "error", "message": "No such answer.", "text": ""})
        except redis.RedisError:
            await self.send_json(
                {
                    "type": "error",
                    "message": "Could not reach the queue to stop it; try again.",
                    "text": "",
                }
            )

    # Channel layer events ------------------------------------------------------------

    async def message_delta(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {
                "type": "delta",
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
    replay = await publish.read_replay(message["id"], message["attempt"], after_seq=after_seq)
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
    replay = await publish.read_replay(message["id"], message["attempt"], after_seq=message["seq"])
    for delta in replay:
        if delta["offset"] != len(message["content"]):
            break  # a gap in the buffer (e.g. Redis restarted): stay at the checkpoint
        message["content"] += delta["text"]
        message["seq"] = delta["seq"]
