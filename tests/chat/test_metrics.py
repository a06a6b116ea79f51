"""``/metrics``: Prometheus's text format, for an admin's session or the configured bearer
token only, with figures that follow the database."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tests.chat.test_consumers import ORIGIN, communicator, session_cookie
from webui import config
from webui.chat import services
from webui.chat.models import AnswerRecord, Conversation, Message
from webui.library.models import ModelJob

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(client: Client, **headers: str) -> dict[str, dict[tuple, float]]:
    """Each sample by name, then by its labels."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_are_never_anonymous_and_only_for_admins(alice, admin_client, monkeypatch):
    monkeypatch.setattr(config, "METRICS_TOKEN", "a-long-scraper-token-0123456789")
    anonymous = Client().get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert b"corral_" not in anonymous.content
    for guess in ("Bearer guessed", "Bearer é-not-ascii", "a-long-scraper-token-0123456789"):
        assert Client().get("/metrics", headers={"Authorization": guess}).status_code == 401
    person = Client()
    person.force_login(alice)
    assert person.get("/metrics").status_code == 403
    assert "corral_queue_depth" in scrape(admin_client)
    token = {"Authorization": "Bearer a-long-scraper-token-0123456789"}
    assert "corral_queue_depth" in scrape(Client(), **token)


def test_no_token_configured_means_admins_only(monkeypatch):
    monkeypatch.setattr(config, "METRICS_TOKEN", "")
    assert Client().get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_figures_follow_the_database(alice, admin_client, gemma, cpu_model):
    now = timezone.now()
    for _ in range(2):
        conversation = Conversation.objects.create(owner=alice, model=gemma)
        Message.objects.create(
            conversation=conversation, role="assistant", model=gemma, status="queued"
        )
    conversation = Conversation.objects.create(owner=alice, model=cpu_model)
    done = Message.objects.create(
        conversation=conversation,
        role="assistant",
        model=cpu_model,
        status="done",
        time_to_first_token_ms=300,
        tokens_per_second=25.0,
        completion_tokens=40,
    )
    AnswerRecord.objects.create(
        owner=alice,
        answer=done,
        model=cpu_model,
        created_at=now,
        started_at=now + timedelta(seconds=3),
        finished_at=now + timedelta(seconds=5),
        completion_tokens=40,
        time_to_first_token_ms=300,
        tokens_per_second=25.0,
    )
    done.conversation.delete()  # the figures of answers that ran stay (the usage ledger)
    ModelJob.objects.create(kind="quantize", title="q", state="running")
    ModelJob.objects.create(kind="pull", title="p", state="failed")
    samples = scrape(admin_client)

    depth = samples["corral_queue_depth"]
    assert depth[(("pool", gemma.pool),)] == 2 and depth[(("pool", "cpu"),)] == 0
    assert samples["corral_answers"][(("state", "queued"),)] == 2
    assert samples["corral_answers"][(("state", "done"),)] == 0  # deleted with its chat
    assert samples["corral_completion_tokens_total"][()] == 40
    jobs = samples["corral_model_jobs"]
    assert jobs[(("kind", "quantize"), ("state", "running"))] == 1
    assert jobs[(("kind", "pull"), ("state", "failed"))] == 1
    assert jobs[(("kind", "pull"), ("state", "running"))] == 0

    ttft = samples["corral_time_to_first_token_seconds_bucket"]
    assert ttft[(("le", "0.25"),)] == 0 and ttft[(("le", "0.5"),)] == 1
    assert samples["corral_time_to_first_token_seconds_sum"][()] == pytest.approx(0.3)
    wait = samples["corral_queue_wait_seconds_bucket"]
    assert wait[(("le", "2.5"),)] == 0 and wait[(("le", "5.0"),)] == 1
    assert samples["corral_queue_wait_seconds_sum"][()] == pytest.approx(3.0)
    speed = samples["corral_answer_tokens_per_second_bucket"]
    assert speed[(("le", "20.0"),)] == 0 and speed[(("le", "40.0"),)] == 1
    assert samples["corral_answer_tokens_per_second_count"][()] == 1


def test_open_websockets_are_counted_while_open(alice, admin_client, gemma):
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )

    def open_sockets() -> float:
        return scrape(admin_client)["corral_open_websockets"][()]

    before = open_sockets()
    cookie = session_cookie(alice)

    async def while_open() -> float:
        socket = communicator(f"/ws/conversations/{conversation.pk}/", ORIGIN, cookie)
        connected, _ = await socket.connect(timeout=5)
        assert connected
        while json.loads(await socket.receive_from(timeout=5))["type"] != "snapshot":
            pass
        during = await sync_to_async(open_sockets)()
        await socket.disconnect()
        return during

    assert async_to_sync(while_open)() == before + 1
    assert open_sockets() == before
