"""The websocket edge through the real ASGI stack (origin check, auth, Redis channel layer)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from webui.asgi import application
from webui.chat import services, streams
from webui.chat.models import Message

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1:8000")


def session_cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (
        b"cookie",
        f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode(),
    )


def communicator(path: str, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    return WebsocketCommunicator(
        application, path, headers=[(b"host", b"127.0.0.1:8000"), *headers]
    )


async def _connect(comm: WebsocketCommunicator) -> tuple[bool, int | None]:
    """(accepted and kept open, close code). A refused socket is accepted first and then
    closed, so the browser learns why; a refused handshake (origin) is not accepted."""
    connected, code = await comm.connect(timeout=5)
    if not connected:
        return False, code
    while True:
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return False, output.get("code")
        if json.loads(output["text"])["type"] == "snapshot":
            await comm.disconnect()
            return True, None


def test_anonymous_user_is_refused(alice, gemma):
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    connected, code = async_to_sync(_connect)(
        communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN)
    )
    assert not connected and code == 4401


def test_foreign_origin_is_refused(alice, gemma):
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    connected, _ = async_to_sync(_connect)(
        communicator(
            f"/ws/conversations/{conversation.pk}/",
            (b"origin", b"http://evil.example"),
            session_cookie(alice),
        )
    )
    assert not connected


def test_another_users_conversation_is_refused(alice, bob, gemma):
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="secret", model_id=gemma.pk
    )
    connected, code = async_to_sync(_connect)(
        communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN, session_cookie(bob))
    )
    assert not connected and code == 4404


def test_owner_gets_snapshot_then_can_send_and_stop(alice, gemma):
    conversation, question, answer = services.send_message(
        user=alice, conversation_id=None, text="first", model_id=gemma.pk
    )
    comm = communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN, session_cookie(alice))

    queue_events: list[dict] = []

    async def receive() -> dict:
        while (event := await comm.receive_json_from(timeout=5))["type"] == "queue":
            queue_events.append(event)
        return event

    async def scenario() -> list[dict]:
        connected, _ = await comm.connect(timeout=5)
        assert connected
        received = [await receive()]
        await comm.send_json_to({"type": "send", "text": "   ", "model": gemma.pk})
        received.append(await receive())
        await comm.send_json_to(
            {"type": "send", "text": "second", "model": gemma.pk, "request": "r2"}
        )
        # The acknowledgement comes straight back; state events through the channel layer.
        replies = [await receive(), await receive(), await receive()]
        order = {"accepted": 0, "message": 1}
        replies.sort(key=lambda e: (order[e["type"]], e.get("message", {}).get("role") != "user"))
        assert replies[0] == {"type": "accepted", "request": "r2"}
        received.extend(replies[1:])
        await comm.send_json_to({"type": "stop", "message": answer.pk})
        received.append(await receive())
        await comm.send_json_to({"type": "sync"})
        received.append(await receive())
        # Queue places are coalesced per pool (at most one round per interval): wait for
        # the round that places the second answer.
        second = next(
            e
            for e in received
            if e.get("type") == "message"
            and e["message"]["role"] == "assistant"
            and e["message"]["status"] == "queued"
        )["message"]["id"]
        while not any(e["message"] == second and e["position"] == 1 for e in queue_events):
            event = await comm.receive_json_from(timeout=5)
            if event["type"] == "queue":
                queue_events.append(event)
        await comm.disconnect()
        return received

    snapshot, refused, new_question, new_answer, stopped, resync = async_to_sync(scenario)()
    assert snapshot["type"] == "snapshot"
    assert [(m["role"], m["content"]) for m in snapshot["messages"]] == [
        ("user", "first"),
        ("assistant", ""),
    ]
    assert refused == {
        "type": "error",
        "message": "Type a message before sending.",
        "request": None,
    }
    assert new_question["message"]["content"] == "second"
    assert new_answer["message"]["status"] == "queued"
    assert stopped["message"]["id"] == answer.pk and stopped["message"]["status"] == "stopped"
    assert Message.objects.get(pk=answer.pk).status == Message.Status.STOPPED
    assert conversation.messages.count() == 4
    # The queue is visible: the snapshot and live events say where each answer waits.
    place = snapshot["messages"][1]["queue"]
    assert {k: place[k] for k in ("pool", "position", "eta_s")} == {
        "pool": "gpu",
        "position": 1,
        "eta_s": None,
    }
    second_answer = new_answer["message"]["id"]
    places = [e["position"] for e in queue_events if e["message"] == second_answer]
    # Live: behind the first answer, then first once it was stopped (changes within one
    # interval arrive as one round, so the 2 may have been folded into the 1).
    assert places[-1] == 1 and set(places) <= {1, 2}
    assert resync["type"] == "snapshot" and resync["messages"][3]["queue"]["position"] == 1


def test_stop_of_another_users_answer_is_refused(alice, bob, gemma):
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="mine", model_id=gemma.pk
    )
    conversation_b, _, _ = services.send_message(
        user=bob, conversation_id=None, text="bob's", model_id=gemma.pk
    )
    comm = communicator(f"/ws/conversations/{conversation_b.pk}/", ORIGIN, session_cookie(bob))

    async def scenario() -> dict:
        await comm.connect(timeout=5)
        await comm.receive_json_from(timeout=5)
        await comm.send_json_to({"type": "stop", "message": answer.pk})
        while (reply := await comm.receive_json_from(timeout=5))["type"] == "queue":
            pass  # the queued answer's place may come first
        await comm.disconnect()
        return reply

    assert async_to_sync(scenario)()["message"] == "No such answer."
    assert Message.objects.get(pk=answer.pk).status == Message.Status.QUEUED


def test_a_delta_reaches_the_socket_while_the_database_thread_is_busy(alice, gemma):
    """A burst of sends queues work on the process's one database thread; a delta needs
    no database, so it must not wait behind that work (it used to: Channels closes stale
    connections on that thread before every event)."""
    conversation, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    comm = communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN, session_cookie(alice))
    delta = streams.Delta(
        conversation_id=conversation.pk,
        message_id=answer.pk,
        attempt=1,
        seq=1,
        offset=0,
        text="Hello",
    )

    async def scenario() -> dict:
        connected, _ = await comm.connect(timeout=5)
        assert connected
        while (await comm.receive_json_from(timeout=5))["type"] != "snapshot":
            pass
        # The database thread is busy for 4 s, as behind a long queue of sends.
        busy = asyncio.ensure_future(database_sync_to_async(time.sleep)(4))
        await asyncio.sleep(0.2)
        await asyncio.get_running_loop().run_in_executor(None, streams.publish_delta, delta)
        try:
            while (event := await comm.receive_json_from(timeout=2))["type"] != "delta":
                pass
        finally:
            await busy
            await comm.disconnect()
        return event

    event = async_to_sync(scenario)()
    assert event["message"] == answer.pk and event["text"] == "Hello"
