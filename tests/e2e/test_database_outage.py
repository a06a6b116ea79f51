"""A 30 s database outage while a worker generates a batch of answers, with the real
PostgreSQL, a real worker and the real web server: each answer goes on streaming (through
Redis), its checkpoints and its ending wait for the database, and it ends ``done`` with the
whole text, by the same attempt. What
people are shown meanwhile names no host, database or driver message.

The outage is real for every process of the stack: the test database stops accepting
connections and every open one is terminated, as when the server restarts or fails over.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
from django.db import connection
from psycopg import sql

from tests.e2e.helpers import login_cookie
from tests.e2e.test_faults import answer_under_way, assert_one_clean_answer, finished
from webui.chat.models import Message

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

OUTAGE_S = 30


@pytest.fixture
def database_outage() -> Iterator[tuple[Callable[[], None], Callable[[], None]]]:
    """(begin, end) of an outage of the test database; it always ends with the test."""
    if connection.vendor != "postgresql":
        pytest.skip("a database server outage needs a database server (PostgreSQL)")
    db = connection.settings_dict
    name = sql.Identifier(db["NAME"])
    control = psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )

    def begin() -> None:
        control.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(name))
        control.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [db["NAME"]],
        )

    def end() -> None:
        control.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(name))
        connection.close()  # this test's own connection was terminated

    try:
        yield begin, end
    finally:
        end()
        control.close()


def internals(text: str) -> list[str]:
    """What a person must never read: the database's name, host, port, driver messages."""
    db = connection.settings_dict
    words = [db["NAME"], "127.0.0.1", "5432", "psycopg", "OperationalError", "accepting"]
    return [word for word in words if word.lower() in text.lower()]


def test_a_batch_streams_through_a_database_outage_and_ends_done(
    alice, long_gemma, gpu_workers, web_server, database_outage, settings
):
    """Four answers generating together in one worker process, the database gone for
    30 s: each goes on streaming, and each ends done with its whole text, by the same
    attempt."""
    settings.CORRAL = {**settings.CORRAL, "MAX_ACTIVE_PER_USER": 10}
    begin, end = database_outage
    worker = gpu_workers("outage")
    batch = [
        answer_under_way(alice, long_gemma, f"Tell a long story about sea number {i}.", web_server)
        for i in range(4)
    ]
    rows = Message.objects.filter(pk__in=[answer.pk for answer, _ in batch])
    assert len({row.worker for row in rows}) == 1  # one process runs them all
    cookie = login_cookie(alice)
    begin()
    began = time.monotonic()
    try:
        before = {answer.pk: len(client.messages[answer.pk]["content"]) for answer, client in batch}
        # The worker keeps generating and the tokens keep arriving, database or not.
        for answer, client in batch:
            client.wait_until(
                lambda c, pk=answer.pk: len(c.messages[pk]["content"]) >= before[pk] + 40,
                timeout=20,
            )

        # A message sent now is refused in words a person can read, and the socket stays.
        client = batch[0][1]
        client.send({"type": "send", "text": "Still there?", "request": "in-outage"})
        deadline = time.monotonic() + 10
        while (event := client.receive(timeout=10))["type"] != "error":
            assert time.monotonic() < deadline and event["type"] != "accepted"
        assert event["request"] == "in-outage"
        assert "database" in event["message"] and not internals(event["message"])

        # A page: a plain server error, nothing more.
        page = httpx.get(web_server.url + "/", headers={"Cookie": cookie}, timeout=10)
        assert page.status_code == 500
        assert not internals(page.text)

        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - began)))
    finally:
        end()

    for answer, client in batch:
        client.wait_until(finished, timeout=90)
        client.close()
        saved = assert_one_clean_answer(client, answer)  # the whole text, as shown
        assert saved.status == Message.Status.DONE, saved.error
        assert saved.attempts == 1  # the same worker finished it: not re-run, not continued
        assert len(saved.content) > before[answer.pk]
        # Nothing of the refused message was saved: it is still the person's to send.
        assert saved.conversation.messages.filter(role="user").count() == 1
    assert "failed, generating on" in worker.log.read_text()  # its writes failed meanwhile
