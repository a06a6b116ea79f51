"""The socket is its owner's only while the owner may chat: account changes close it at
once, every message re-checks the session, and bad input is refused without echo."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.sessions.models import Session

from tests.chat.test_consumers import ORIGIN, communicator, session_cookie
from webui.accounts import people, sessions
from webui.accounts.models import Profile
from webui.chat import services
from webui.chat.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


def _conversation(user, gemma):
    conversation, _, answer = services.send_message(
        user=user, conversation_id=None, text="hello", model_id=gemma.pk
    )
    return conversation, answer


async def _until_closed(comm, timeout: float = 10) -> tuple[list[dict], int | None]:
    events = []
    while True:
        output = await comm.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return events, output.get("code")
        events.append(json.loads(output["text"]))


async def _reply(comm) -> dict:
    """The next message that answers us: a queued answer's place (a hint sent whenever the
    queue moves) may come first."""
    while (event := await comm.receive_json_from(timeout=5))["type"] == "queue":
        pass
    return event


async def _open(comm) -> None:
    connected, _ = await comm.connect(timeout=5)
    assert connected
    assert (await comm.receive_json_from(timeout=5))["type"] == "snapshot"


def test_a_person_waiting_for_approval_is_told_so(alice, gemma):
    conversation, _ = _conversation(alice, gemma)
    Profile.objects.filter(user=alice).update(approved=False)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN, session_cookie(alice))

    async def scenario():
        await comm.connect(timeout=5)
        return await _until_closed(comm)

    events, code = async_to_sync(scenario)()
    assert code == 4403
    assert events == [{"type": "signed_out", "reason": "Your account is waiting for approval."}]


@pytest.mark.parametrize(
    "revoke",
    [
        pytest.param(lambda admin, user: people.deactivate(admin, user), id="deactivate"),
        pytest.param(lambda admin, user: people.delete(admin, user), id="delete"),
        pytest.param(lambda admin, user: people.demote(admin, user), id="demote"),
        pytest.param(lambda admin, user: sessions.end_all(user, "bye"), id="sign-out-everywhere"),
    ],
)
def test_account_changes_close_open_sockets_at_once(revoke, alice, gemma, django_user_model):
    admin = django_user_model.objects.create_user("root", password="x", is_staff=True)
    alice.is_staff = True  # so that demotion is a change
    alice.save()
    conversation, answer = _conversation(alice, gemma)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN, session_cookie(alice))

    async def scenario():
        await _open(comm)
        await sync_to_async(revoke)(admin, alice)
        return await _until_closed(comm)

    events, code = async_to_sync(scenario)()
    assert code == 4401
    assert [e for e in events if e["type"] == "signed_out"] == [events[-1]]
    assert events[-1]["reason"]


def test_an_old_socket_cannot_act_after_its_session_ended(alice, gemma):
    """Even if the close event is lost, the next message is refused."""
    conversation, answer = _conversation(alice, gemma)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN, session_cookie(alice))

    async def scenario():
        await _open(comm)
        await sync_to_async(lambda: Session.objects.all().delete())()  # no event sent
        await comm.send_json_to({"type": "stop", "message": answer.pk})
        return await _until_closed(comm)

    events, code = async_to_sync(scenario)()
    assert code == 4401
    assert events[-1] == {"type": "signed_out", "reason": "You were signed out."}
    assert Message.objects.get(pk=answer.pk).status == Message.Status.QUEUED


def test_password_change_closes_every_other_session(alice, gemma):
    conversation, _ = _conversation(alice, gemma)
    kept, other = session_cookie(alice), session_cookie(alice)
    keep_key = kept[1].decode().split("=", 1)[1]
    comm_kept = communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN, kept)
    comm_other = communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN, other)

    async def scenario():
        await _open(comm_kept)
        await _open(comm_other)
        await sync_to_async(sessions.end_all)(
            alice, "Your password changed.", keep_session_key=keep_key
        )
        closed = await _until_closed(comm_other)
        await comm_kept.send_json_to({"type": "sync"})
        still_open = await _reply(comm_kept)
        await comm_kept.disconnect()
        return closed, still_open

    (events, code), still_open = async_to_sync(scenario)()
    assert code == 4401 and events[-1]["reason"] == "Your password changed."
    assert still_open["type"] == "snapshot"


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        json.dumps({"type": "launch"}),
        json.dumps({"type": "send", "text": "hi", "evil": 1}),
        json.dumps({"type": "stop", "message": "1; DROP TABLE"}),
        json.dumps({"type": "send", "text": "x", "request": "<script>" * 10}),
        json.dumps(["send"]),
    ],
)
def test_malformed_messages_are_refused_without_echo_and_change_nothing(frame, alice, gemma):
    conversation, _ = _conversation(alice, gemma)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN, session_cookie(alice))

    async def scenario():
        await _open(comm)
        await comm.send_to(text_data=frame)
        reply = await _reply(comm)
        await comm.disconnect()
        return reply

    reply = async_to_sync(scenario)()
    assert reply["type"] == "error" and reply["message"].startswith("Message not understood")
    assert "DROP" not in reply["message"] and "<script>" not in reply["message"]
    assert conversation.messages.count() == 2
