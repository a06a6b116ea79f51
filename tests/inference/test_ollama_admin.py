"""Model management on an Ollama server (inference/ollama_admin.py) against the stand-in."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import httpx
import pytest

from inference import ollama_admin
from inference.base import (
    BackendError,
    ChatMessage,
    Finished,
    GenerationRequest,
    ModelSpec,
    TextChunk,
)
from inference.ollama import OllamaBackend
from inference.ollama_admin import (
    ADDRESS_MESSAGE,
    MODEL_NAME_PATTERN,
    REDIRECT_MESSAGE,
    Cancelled,
    InvalidModelName,
    PullProgress,
    check_server,
    validate_model_name,
)
from tests.ollama_server import (
    OLLAMA_VERSION,
    PULL_NOT_FOUND,
    OllamaTestServer,
    PullableModel,
    ScriptedModel,
)

# Every failure must reach the admin within this many seconds.
ERROR_DEADLINE_S = 5.0

QWEN = ScriptedModel(
    reply="Pulled and ready.",
    family="qwen3",
    parameter_size="751.63M",
    quantization_level="Q4_K_M",
    parameter_count=751_632_384,
    context_length=40_960,
    capabilities=("completion", "tools", "thinking"),
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def never_stop() -> bool:
    return False


@pytest.fixture
def server() -> Iterator[OllamaTestServer]:
    registry = {"qwen3:0.6b": PullableModel(layer_sizes=(5_000, 1_200, 96), model=QWEN)}
    models = {
        "llama3.2:1b": ScriptedModel(size=1_321_098_329),
        "bare:latest": ScriptedModel(template="", family="gemma3", quantization_level="F16"),
    }
    with OllamaTestServer(models=models, registry=registry) as srv:
        yield srv


def pull_recording(url: str, name: str) -> list[PullProgress]:
    seen: list[PullProgress] = []
    ollama_admin.pull(url, name, on_progress=seen.append, should_stop=never_stop)
    return seen


# -- health ------------------------------------------------------------------------------------


def test_a_running_server_is_healthy_and_lists_its_models(server: OllamaTestServer) -> None:
    health = check_server(server.url + "/")

    assert health.ok, health
    assert health.error is None
    assert health.version == OLLAMA_VERSION
    by_name = {m.name: m for m in health.models}
    assert set(by_name) == {"llama3.2:1b", "bare:latest"}
    llama = by_name["llama3.2:1b"]
    assert llama.size == 1_321_098_329
    assert (llama.family, llama.parameter_size, llama.quantization_level) == (
        "llama",
        "1.2B",
        "Q4_K_M",
    )
    assert llama.digest and len(llama.digest) == 64
    assert isinstance(llama.modified_at, datetime)
    assert [p for _, p in server.paths] == ["/api/version", "/api/tags"]


def test_a_port_nothing_listens_on_is_unhealthy_within_the_deadline() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    health = check_server(url)
    elapsed = time.monotonic() - started

    assert elapsed < ERROR_DEADLINE_S
    assert not health.ok
    assert health.error == "The Ollama server is unreachable."
    assert url in health.detail
    assert health.version is None and health.models == []


def test_a_server_that_goes_down_is_unhealthy_until_it_comes_back(
    server: OllamaTestServer,
) -> None:
    server.down()
    down = check_server(server.url)
    server.up()
    back = check_server(server.url)

    assert not down.ok and down.error == "The Ollama server is unreachable."
    assert back.ok, back


@pytest.mark.parametrize(
    "address", ["ftp://127.0.0.1:11434", "127.0.0.1:11434", "http://", "http://h:port", ""]
)
def test_an_address_that_is_not_an_http_url_is_refused_unasked(address: str) -> None:
    health = check_server(address)
    assert not health.ok
    assert health.error == ADDRESS_MESSAGE
    with pytest.raises(BackendError, match="must be an http"):
        ollama_admin.delete(address, "llama3.2:1b")


# -- pull --------------------------------------------------------------------------------------


def test_pull_reports_growing_progress_then_the_model_is_installed_and_answers(
    server: OllamaTestServer,
) -> None:
    seen = pull_recording(server.url, "qwen3:0.6b")

    statuses = [p.status for p in seen]
    assert statuses[0] == "pulling manifest" and seen[0].fraction is None
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [p for p in seen if p.digest]
    assert len({p.digest for p in layers}) == 3
    for p in layers:
        assert p.digest is not None and p.status == f"pulling {p.digest[7:19]}"
    big = [p.completed if p.completed is not None else -1 for p in layers if p.total == 5_000]
    assert big == sorted(big) and big[0] == 0 and big[-1] == 5_000
    fractions = [p.fraction for p in seen if p.fraction is not None]
    assert fractions == sorted(fractions)
    assert 0.0 <= fractions[0] < 0.5
    assert any(0.0 < f < 1.0 for f in fractions)
    assert fractions[-1] == 1.0 and seen[-1].fraction == 1.0
    assert server.pull_requests == [{"model": "qwen3:0.6b", "insecure": False, "stream": True}]

    installed = {m.name: m for m in check_server(server.url).models}
    assert installed["qwen3:0.6b"].size == 5_000 + 1_200 + 96
    request = GenerationRequest(
        model=ModelSpec("ollama", "qwen3:0.6b", {"host": server.url}),
        messages=(ChatMessage("user", "Ready?"),),
    )
    items = list(OllamaBackend().stream(request))
    assert "".join(i.text for i in items if isinstance(i, TextChunk)) == "Pulled and ready."
    assert isinstance(items[-1], Finished)


def test_pulling_an_installed_model_again_reports_each_layer_complete(
    server: OllamaTestServer,
) -> None:
    pull_recording(server.url, "qwen3:0.6b")
    again = pull_recording(server.url, "qwen3:0.6b")

    layers = [p for p in again if p.digest]
    assert len(layers) == 3 and all(p.completed == p.total for p in layers)
    assert again[-1].status == "success" and again[-1].fraction == 1.0


def test_pulling_an_unknown_name_raises_ollamas_words(server: OllamaTestServer) -> None:
    seen: list[PullProgress] = []
    with pytest.raises(BackendError) as caught:
        ollama_admin.pull(
            server.url, "no-such-model:7b", on_progress=seen.append, should_stop=never_stop
        )

    message = str(caught.value)
    assert PULL_NOT_FOUND in message and "no-such-model:7b" in message
    assert [p.status for p in seen] == ["pulling manifest"]
    assert "no-such-model:7b" not in server.installed


def test_cancelling_mid_pull_closes_the_connection_and_installs_nothing(
    server: OllamaTestServer,
) -> None:
    server.publish("slow:latest", PullableModel(layer_sizes=(10_000, 500), steps_per_layer=20))
    server.pull_step_delay = 0.05  # the whole pull: about 2.3 s
    seen: list[PullProgress] = []

    def stop_once_downloading() -> bool:
        return any(p.completed for p in seen)

    started = time.monotonic()
    with pytest.raises(Cancelled) as caught:
        ollama_admin.pull(
            server.url, "slow", on_progress=seen.append, should_stop=stop_once_downloading
        )
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"the pull ran on for {elapsed:.1f} s"
    # The traceback keeps pull()'s frame alive: the connection must have been closed on
    # purpose, not by the garbage collector freeing an abandoned stream.
    assert server.wait_for_pull_disconnect(timeout=ERROR_DEADLINE_S), caught.traceback
    assert server.pull_disconnects == 1
    assert server.pulls_completed == 0
    assert "slow:latest" not in server.installed
    assert seen[-1].status.startswith("pulling ") and seen[-1].status != "success"


def test_a_server_dying_mid_pull_is_an_error_not_a_hang(server: OllamaTestServer) -> None:
    server.publish("slow:latest", PullableModel(layer_sizes=(10_000,), steps_per_layer=20))
    server.pull_step_delay = 0.05
    seen: list[PullProgress] = []

    def kill_server_once_downloading() -> bool:
        if any(p.completed for p in seen):
            server.down()  # cuts the pull's connection; again is a no-op
        return False

    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        ollama_admin.pull(
            server.url, "slow", on_progress=seen.append, should_stop=kill_server_once_downloading
        )

    assert time.monotonic() - started < ERROR_DEADLINE_S
    assert str(caught.value) == "Ollama error: the connection to the server failed."
    assert server.url in caught.value.detail
    assert server.pull_disconnects == 0  # the server went away; the client did not leave


def test_a_stop_asked_before_the_pull_sends_nothing(server: OllamaTestServer) -> None:
    with pytest.raises(Cancelled):
        ollama_admin.pull(server.url, "qwen3:0.6b", on_progress=print, should_stop=lambda: True)
    assert server.pull_requests == []


def test_an_invalid_name_is_refused_before_anything_is_sent(server: OllamaTestServer) -> None:
    with pytest.raises(InvalidModelName, match="not an Ollama model name"):
        pull_recording(server.url, "../../etc/passwd")
    with pytest.raises(InvalidModelName):
        ollama_admin.copy(server.url, "llama3.2:1b", "bad name")
    assert server.paths == []


# -- show, copy, delete ------------------------------------------------------------------------


def test_show_gives_architecture_context_quantization_and_template(
    server: OllamaTestServer,
) -> None:
    pull_recording(server.url, "qwen3:0.6b")
    details = ollama_admin.show(server.url, "qwen3:0.6b")

    assert details.architecture == "qwen3"
    assert details.parameter_count == 751_632_384
    assert details.context_length == 40_960
    assert details.quantization == "Q4_K_M"
    assert (details.family, details.parameter_size) == ("qwen3", "751.63M")
    assert details.has_template
    assert "stop" in details.parameters and "<|eot_id|>" in details.parameters
    assert details.capabilities == ["completion", "tools", "thinking"]
    assert isinstance(details.modified_at, datetime)

    bare = ollama_admin.show(server.url, "bare")
    assert not bare.has_template
    assert (bare.architecture, bare.quantization) == ("gemma3", "F16")


def test_show_of_a_missing_model_says_so(server: OllamaTestServer) -> None:
    with pytest.raises(BackendError, match="model 'ghost:1b' not found"):
        ollama_admin.show(server.url, "ghost:1b")


def test_copy_then_delete(server: OllamaTestServer) -> None:
    ollama_admin.copy(server.url, "llama3.2:1b", "team/llama:prod")
    assert {m.name for m in check_server(server.url).models} == {
        "llama3.2:1b",
        "bare:latest",
        "team/llama:prod",
    }

    ollama_admin.delete(server.url, "team/llama:prod")
    assert {m.name for m in check_server(server.url).models} == {"llama3.2:1b", "bare:latest"}
    assert ("DELETE", "/api/delete") in server.paths


def test_deleting_a_missing_model_names_it(server: OllamaTestServer) -> None:
    with pytest.raises(BackendError) as caught:
        ollama_admin.delete(server.url, "ghost:1b")
    assert str(caught.value) == "Ollama could not delete 'ghost:1b': model 'ghost:1b' not found"
    assert server.url in caught.value.detail and "404" in caught.value.detail


def test_copying_a_missing_model_names_it(server: OllamaTestServer) -> None:
    with pytest.raises(BackendError, match='model "ghost:1b" not found'):
        ollama_admin.copy(server.url, "ghost:1b", "other:1b")
    assert "other:1b" not in server.installed


# -- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        lambda url: ollama_admin.pull(url, "qwen3:0.6b", on_progress=print, should_stop=never_stop),
        lambda url: ollama_admin.show(url, "llama3.2:1b"),
        lambda url: ollama_admin.copy(url, "llama3.2:1b", "x:1"),
        lambda url: ollama_admin.delete(url, "llama3.2:1b"),
    ],
    ids=["pull", "show", "copy", "delete"],
)
def test_a_redirect_is_refused_and_its_location_never_asked(
    server: OllamaTestServer, operation: Callable[[str], None]
) -> None:
    with OllamaTestServer() as elsewhere:
        server.redirect_to = elsewhere.url
        health = check_server(server.url)
        with pytest.raises(BackendError) as caught:
            operation(server.url)

        assert not health.ok and health.error == REDIRECT_MESSAGE
        assert str(caught.value) == REDIRECT_MESSAGE
        assert elsewhere.paths == []
        assert len(server.paths) == 2  # /api/version, then the operation's one request


# -- the stand-in's own protocol, as a client other than ours sees it --------------------------


def test_the_stand_in_answers_pull_delete_and_copy_as_ollama_does(
    server: OllamaTestServer,
) -> None:
    with httpx.Client(base_url=server.url) as http:
        invalid = http.post("/api/pull", json={"model": "../x"})
        assert (invalid.status_code, invalid.json()) == (400, {"error": "invalid model name"})

        unknown = http.post("/api/pull", json={"model": "nope", "stream": False})
        assert (unknown.status_code, unknown.json()) == (500, {"error": PULL_NOT_FOUND})
        streamed = http.post("/api/pull", json={"model": "nope"})
        assert streamed.status_code == 200
        assert streamed.headers["content-type"] == "application/x-ndjson"
        assert streamed.text == (
            '{"status":"pulling manifest"}\n{"error":"pull model manifest: file does not exist"}\n'
        )

        whole = http.post("/api/pull", json={"name": "qwen3:0.6b", "stream": False})
        assert (whole.status_code, whole.json()) == (200, {"status": "success"})

        bad_delete = http.request("DELETE", "/api/delete", json={"model": "a b"})
        assert (bad_delete.status_code, bad_delete.json()) == (
            400,
            {"error": 'name "a b" is invalid'},
        )
        deleted = http.request("DELETE", "/api/delete", json={"model": "qwen3:0.6b"})
        assert (deleted.status_code, deleted.content) == (200, b"")
        gone = http.request("DELETE", "/api/delete", json={"model": "qwen3:0.6b"})
        assert (gone.status_code, gone.json()) == (404, {"error": "model 'qwen3:0.6b' not found"})

        bad_copy = http.post("/api/copy", json={"source": "llama3.2:1b", "destination": "x/y/z/w"})
        assert (bad_copy.status_code, bad_copy.json()) == (
            400,
            {"error": 'destination "x/y/z/w" is invalid'},
        )
        copied = http.post("/api/copy", json={"source": "llama3.2:1b", "destination": "y"})
        assert (copied.status_code, copied.content) == (200, b"")
        assert "y:latest" in server.installed

        assert http.get("/").text == "Ollama is running"


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "llama3.2",
        "llama3.2:1b",
        "qwen2.5-coder:7b-instruct-q4_K_M",
        "library/llama3:latest",
        "team_1/model-x",
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        "registry.example.com:5000/team/model:v1.2",
        "_private",
        "m" * 80 + ":" + "t" * 80,
    ],
)
def test_names_ollama_can_pull_are_accepted(name: str) -> None:
    assert validate_model_name(name) == name
    assert MODEL_NAME_PATTERN.search(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        " llama3",
        "llama3 ",
        "llama 3",
        "llama3\n",
        "/llama3",
        "llama3/",
        "../llama3",
        "a..b",
        "ns/../x",
        "llama3?x=1",
        "llama3#frag",
        "llama3@sha256:abc",
        "user@host/ns/model",
        "http://evil.example/ns/model",
        "ns.with.dot/model",
        "a/b/c/d",
        "model:",
        ":tag",
        "model:a:b",
        "-dash",
        ".hidden",
        "m" * 81,
        "model:" + "t" * 81,
        "mödel",
        "model%2F..",
        "model\\x",
    ],
)
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidModelName):
        validate_model_name(name)
    assert MODEL_NAME_PATTERN.search(name) is None
