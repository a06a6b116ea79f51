"""Ollama servers: the address rules, health, jobs that pull (with progress every admin
sees, and cancel), show, copy and delete, and routing to the least busy server that is up.
Against tests/ollama_server.py, which speaks Ollama's HTTP API over real sockets."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from django.test import Client

from inference import BackendError
from tests.chat.conftest import UNSERVED_POOL
from tests.ollama_server import OllamaTestServer, PullableModel, ScriptedModel
from webui import config
from webui.chat import services
from webui.chat.models import LanguageModel, Message
from webui.library import jobs, ollama_routing, ollama_servers
from webui.library.models import JobKind, JobState, ModelJob, OllamaServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def unserved_pool():
    """Wake-ups sent to the unserved pool are dropped afterwards."""
    yield
    redis.Redis.from_url(config.redis_url()).delete(UNSERVED_POOL)


SMALL = PullableModel(
    layer_sizes=(4000, 100), model=ScriptedModel(reply="Hi there."), steps_per_layer=4
)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]:80",
        "http://[fe80::1]:11434",
        "http://100.100.100.200",
        "http://0.0.0.0:11434",
        "http://224.0.0.1",
        "ftp://127.0.0.1:11434",
        "file:///etc/passwd",
        "http://user:secret@127.0.0.1:11434",
        "http://127.0.0.1:11434/api?x=1",
        "127.0.0.1:11434",
        "http://",
    ],
)
def test_addresses_that_are_not_an_ollama_server_are_refused(url):
    with pytest.raises(ollama_servers.ServerError):
        ollama_servers.check_address(url)


@pytest.mark.parametrize(
    ("url", "called"),
    [
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("http://localhost:11434/", "http://localhost:11434"),
        ("https://[::1]:8443", "https://[::1]:8443"),
        ("http://10.0.0.5:11434", "http://10.0.0.5:11434"),
    ],
)
def test_loopback_and_private_addresses_are_allowed(url, called):
    assert ollama_servers.check_address(url) == called


def test_a_server_is_checked_when_added_and_lists_its_models():
    with OllamaTestServer(models={"llama3.2:1b": "Hello"}) as server:
        added = ollama_servers.add_server("local", server.url)
    assert added.healthy and added.version
    assert [m["name"] for m in added.remote_models] == ["llama3.2:1b"]


def test_a_redirecting_server_is_down_and_its_target_never_asked():
    with OllamaTestServer(models={"a:1b": "x"}) as target, OllamaTestServer() as redirecting:
        redirecting.redirect_to = target.url
        added = ollama_servers.add_server("sneaky", redirecting.url)
        assert not added.healthy and "redirect" in added.last_error
        assert target.chat_requests == [] and target.pull_requests == []


def test_a_server_that_stops_is_shown_down(admin_client):
    with OllamaTestServer(models={"a:1b": "x"}) as server:
        added = ollama_servers.add_server("local", server.url)
        server.down()
        ollama_servers.check_server(added)
    assert not added.healthy and added.last_error
    page = admin_client.get("/manage/library/ollama/").content.decode()
    assert 'data-state="down"' in page and added.last_error.split(":")[0] in page


def _run_in_thread(job: ModelJob) -> threading.Thread:
    thread = threading.Thread(target=jobs.run_job, args=(job.pk, "test-worker"))
    thread.start()
    return thread


def test_a_pull_shows_progress_to_every_admin_then_registers_the_model(admin, django_user_model):
    other = django_user_model.objects.create_user("other-admin", password="x", is_staff=True)
    watcher = Client()
    watcher.force_login(other)
    # Progress reaches the row at most twice a second: steps slower than that all show.
    with OllamaTestServer(registry={"tiny:1b": SMALL}, pull_step_delay=0.35) as server:
        added = ollama_servers.add_server("local", server.url)
        job = ollama_servers.start_model_job(admin, added, JobKind.PULL, "tiny:1b")
        thread = _run_in_thread(job)
        seen: list[float] = []
        deadline = time.monotonic() + 20
        while thread.is_alive() and time.monotonic() < deadline:
            listed = watcher.get("/manage/library/jobs.json").json()["jobs"]
            mine = next(j for j in listed if j["id"] == job.pk)
            if mine["state"] == "running" and mine["progress"] is not None:
                seen.append(mine["progress"])
            time.sleep(0.1)
        thread.join(timeout=10)
    job.refresh_from_db()
    assert job.state == JobState.DONE, job.error
    assert any(0 < value < 1 for value in seen), seen  # another admin saw it mid-way
    assert seen == sorted(seen)
    model = LanguageModel.objects.get(name="ollama/tiny:1b")
    assert job.result_model == model and model.backend == "ollama" and model.target == "tiny:1b"
    assert model.details["context_length"] and model.details["has_chat_template"] is True
    added.refresh_from_db()
    assert ollama_servers.has_model(added, "tiny:1b")


def test_cancelling_a_pull_closes_the_download(admin, admin_client):
    slow = PullableModel(layer_sizes=(10_000,), steps_per_layer=200)
    with OllamaTestServer(registry={"big:7b": slow}, pull_step_delay=0.05) as server:
        added = ollama_servers.add_server("local", server.url)
        job = ollama_servers.start_model_job(admin, added, JobKind.PULL, "big:7b")
        thread = _run_in_thread(job)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.progress:
                break
            time.sleep(0.05)
        admin_client.post(f"/manage/library/jobs/{job.pk}/cancel/")
        thread.join(timeout=10)
        assert server.wait_for_pull_disconnect(timeout=5)
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    assert not LanguageModel.objects.filter(name="ollama/big:7b").exists()


def test_pulling_an_unknown_model_fails_with_ollamas_words(admin):
    with OllamaTestServer(registry={}) as server:
        added = ollama_servers.add_server("local", server.url)
        job = ollama_servers.start_model_job(admin, added, JobKind.PULL, "nope:1b")
        jobs.run_job(job.pk, "w")
    job.refresh_from_db()
    assert job.state == JobState.FAILED and "file does not exist" in job.error


@pytest.mark.parametrize("name", ["../etc", "a b", "http://x/y", "x;rm", ""])
def test_model_names_are_checked_before_anything_is_queued(admin, name):
    server = OllamaServer.objects.create(name="s", base_url="http://127.0.0.1:1")
    with pytest.raises(ollama_servers.ServerError):
        ollama_servers.start_model_job(admin, server, JobKind.PULL, name)
    assert not ModelJob.objects.exists()


def test_show_copy_and_delete_run_as_jobs(admin):
    with OllamaTestServer(models={"llama3.2:1b": "Hello"}) as server:
        added = ollama_servers.add_server("local", server.url)
        shown = ollama_servers.start_model_job(admin, added, JobKind.SHOW, "llama3.2:1b")
        jobs.run_job(shown.pk, "w")
        copied = ollama_servers.start_model_job(
            admin, added, JobKind.COPY, "llama3.2:1b", "mine:latest"
        )
        jobs.run_job(copied.pk, "w")
        added.refresh_from_db()
        assert ollama_servers.has_model(added, "mine")
        deleted = ollama_servers.start_model_job(admin, added, JobKind.DELETE, "mine:latest")
        jobs.run_job(deleted.pk, "w")
        gone = ollama_servers.start_model_job(admin, added, JobKind.DELETE, "ghost:1b")
        jobs.run_job(gone.pk, "w")
    for job in (shown, copied, deleted, gone):
        job.refresh_from_db()
    assert shown.state == JobState.DONE and shown.result["context_length"] == 131072
    assert "context 131072" in jobs.describe(shown)["summary"]
    assert copied.state == deleted.state == JobState.DONE
    added.refresh_from_db()
    assert not ollama_servers.has_model(added, "mine")
    assert gone.state == JobState.FAILED and "not found" in gone.error


def test_an_answer_goes_to_the_least_busy_server_that_is_up(alice, bob, admin, unserved_pool):
    a = OllamaServer.objects.create(
        name="a", base_url="http://127.0.0.1:1", healthy=True, remote_models=[{"name": "m:1b"}]
    )
    b = OllamaServer.objects.create(
        name="b", base_url="http://127.0.0.1:2", healthy=True, remote_models=[{"name": "m:1b"}]
    )
    OllamaServer.objects.create(
        name="c", base_url="http://127.0.0.1:3", healthy=True, remote_models=[{"name": "other"}]
    )
    # In a pool no test worker consumes: a running worker would route and end these answers.
    model = LanguageModel.objects.create(
        name="ollama/m:1b", backend="ollama", target="m:1b", pool=UNSERVED_POOL
    )
    answers = [
        services.send_message(user=user, conversation_id=None, text="q", model_id=model.pk)[2]
        for user in (alice, bob, admin)
    ]
    # a has two answers in flight, b none: the third goes to b, and stays there.
    Message.objects.filter(pk__in=[answers[0].pk, answers[1].pk]).update(served_by=a.base_url)
    assert ollama_routing.route(answers[2], "m:1b") == b.base_url
    assert Message.objects.get(pk=answers[2].pk).served_by == b.base_url
    assert ollama_routing.route(answers[2], "m:1b") == b.base_url
    # b goes down: its answer moves to a, the only one up that has the model.
    OllamaServer.objects.filter(pk=b.pk).update(healthy=False)
    assert ollama_routing.route(answers[2], "m:1b") == a.base_url
    OllamaServer.objects.filter(pk=a.pk).update(healthy=False)
    with pytest.raises(BackendError, match="No Ollama server that is up has m:1b"):
        ollama_routing.least_busy("m:1b")


def test_only_admins_reach_the_ollama_pages(client, alice):
    server = OllamaServer.objects.create(name="s", base_url="http://127.0.0.1:1")
    client.force_login(alice)
    assert client.get("/manage/library/ollama/").status_code == 404
    assert (
        client.post(f"/manage/library/ollama/{server.pk}/pull/", {"model": "x"}).status_code == 404
    )
    assert (
        client.post(
            "/manage/library/ollama/", {"name": "n", "base_url": "http://127.0.0.1:9"}
        ).status_code
        == 404
    )
    assert not ModelJob.objects.exists() and OllamaServer.objects.count() == 1


def test_a_server_removed_during_its_check_stays_removed():
    with OllamaTestServer(models={"a:1b": "x"}) as server:
        added = ollama_servers.add_server("local", server.url)
        OllamaServer.objects.filter(pk=added.pk).delete()  # an admin removed it meanwhile
        ollama_servers.check_server(added)
    assert not OllamaServer.objects.exists()


def test_chat_never_follows_a_redirect(alice):
    from inference import GenerationRequest, ModelSpec, get_backend
    from inference.base import ChatMessage

    with OllamaTestServer(models={"a:1b": "secret"}) as target, OllamaTestServer() as sneaky:
        sneaky.redirect_to = target.url
        spec = ModelSpec("ollama", "a:1b", {"host": sneaky.url})
        request = GenerationRequest(spec, (ChatMessage("user", "hi"),))
        with pytest.raises(BackendError):
            list(get_backend("ollama").stream(request))
        assert target.chat_requests == []
