"""The Ollama backend against a server that speaks Ollama's HTTP API (tests/ollama_server.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from inference.base import (
    BackendError,
    ChatMessage,
    Finished,
    GenerationRequest,
    ModelSpec,
    SamplingOptions,
    StreamItem,
    TextChunk,
    Usage,
)
from inference.ollama import OllamaBackend, list_models
from inference.registry import get_backend
from tests.ollama_server import OllamaTestServer, ScriptedModel

REPLY = "The quick brown fox jumps over the lazy dog."
# Every failure must reach the user within this many seconds.
ERROR_DEADLINE_S = 5.0


def make_request(
    target: str = "llama3.2:1b",
    *,
    host: str | None = None,
    options: SamplingOptions | None = None,
    **settings: object,
) -> GenerationRequest:
    if host is not None:
        settings["host"] = host
    return GenerationRequest(
        model=ModelSpec(backend="ollama", target=target, settings=dict(settings)),
        messages=(
            ChatMessage("system", "You are terse."),
            ChatMessage("user", "Say something about foxes."),
        ),
        options=options or SamplingOptions(),
    )


def run(stream: Iterator[StreamItem]) -> tuple[str, Finished]:
    """Consume a stream; check its shape (chunks, then exactly one Finished, last)."""
    items = list(stream)
    assert items, "empty stream"
    *chunks, last = items
    assert isinstance(last, Finished), items
    assert all(isinstance(c, TextChunk) and c.text for c in chunks), chunks
    return "".join(c.text for c in chunks), last


def fail_within_deadline(request: GenerationRequest) -> tuple[BackendError, list[StreamItem]]:
    """Stream until BackendError; return it and what arrived before, and check the deadline."""
    received: list[StreamItem] = []
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        for item in OllamaBackend().stream(request):
            received.append(item)
    elapsed = time.monotonic() - started
    assert elapsed < ERROR_DEADLINE_S, f"error took {elapsed:.1f} s"
    return caught.value, received


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server() -> Iterator[OllamaTestServer]:
    with OllamaTestServer(models={"llama3.2:1b": REPLY}) as srv:
        yield srv


def test_registry_serves_the_ollama_backend() -> None:
    backend = get_backend("ollama")
    assert isinstance(backend, OllamaBackend)
    assert backend.name == "ollama"


def test_streams_the_reply_then_finished_with_usage(server: OllamaTestServer) -> None:
    items = list(OllamaBackend().stream(make_request(host=server.url)))

    chunks = [i for i in items if isinstance(i, TextChunk)]
    assert len(chunks) == len(REPLY.split()), "one chunk per streamed token"
    text, finished = run(iter(items))
    assert text == REPLY
    # The server counts 4 tokens per message plus its words: (3 + 4) + (4 + 4).
    assert finished == Finished(
        reason="stop", usage=Usage(prompt_tokens=15, completion_tokens=len(REPLY.split()))
    )
    assert server.completed == 1
    assert server.disconnects == 0


def test_messages_and_sampling_options_reach_the_server(server: OllamaTestServer) -> None:
    options = SamplingOptions(
        temperature=0.2,
        top_p=0.5,
        top_k=7,
        repeat_penalty=1.3,
        max_tokens=100,
        seed=42,
        stop=("STOP", "###"),
    )
    run(OllamaBackend().stream(make_request(host=server.url, options=options, num_ctx=8192)))

    (body,) = server.chat_requests
    assert body["model"] == "llama3.2:1b"
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say something about foxes."},
    ]
    assert body["options"] == {
        "temperature": 0.2,
        "top_p": 0.5,
        "top_k": 7,
        "repeat_penalty": 1.3,
        "num_predict": 100,
        "seed": 42,
        "stop": ["STOP", "###"],
        "num_ctx": 8192,
    }


def test_unset_seed_and_stop_are_left_to_the_model(server: OllamaTestServer) -> None:
    run(OllamaBackend().stream(make_request(host=server.url)))

    options = server.chat_requests[0]["options"]
    assert "seed" not in options
    assert "stop" not in options
    assert options["num_predict"] == SamplingOptions().max_tokens


def test_max_tokens_cuts_the_answer_with_reason_length(server: OllamaTestServer) -> None:
    request = make_request(host=server.url, options=SamplingOptions(max_tokens=3))
    text, finished = run(OllamaBackend().stream(request))

    assert text == "The quick brown"
    assert finished.reason == "length"
    assert finished.usage.completion_tokens == 3


def test_stop_sequence_ends_the_answer_with_reason_stop(server: OllamaTestServer) -> None:
    request = make_request(host=server.url, options=SamplingOptions(stop=("jumps",)))
    text, finished = run(OllamaBackend().stream(request))

    assert text == "The quick brown fox "
    assert finished.reason == "stop"


def test_host_comes_from_ollama_host_when_settings_have_none(
    server: OllamaTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{server.port}")
    text, _ = run(OllamaBackend().stream(make_request()))

    assert text == REPLY
    assert len(server.chat_requests) == 1


def test_host_in_settings_wins_over_ollama_host(
    server: OllamaTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{closed_port()}")
    text, _ = run(OllamaBackend().stream(make_request(host=server.url)))

    assert text == REPLY


def test_closing_the_stream_mid_answer_disconnects_from_the_server() -> None:
    long_reply = " ".join(f"word{i}" for i in range(400))
    with OllamaTestServer(models={"llama3.2:1b": long_reply}, token_delay=0.02) as server:
        stream = OllamaBackend().stream(make_request(host=server.url))
        first, second = next(stream), next(stream)
        assert first == TextChunk("word0") and second == TextChunk(" word1")

        stream.close()

        # 400 tokens at 20 ms take 8 s: a disconnect seen well before that is the close.
        assert server.wait_for_disconnect(timeout=3), "server never saw the client go away"
        assert server.disconnects == 1
        assert server.completed == 0


def test_unknown_model_says_which_model_and_server(server: OllamaTestServer) -> None:
    error, received = fail_within_deadline(make_request("mistral", host=server.url))

    assert received == []
    assert str(error) == (
        "Ollama model 'mistral' is not available on its server: model 'mistral' not found"
    )
    assert error.detail == server.url  # for the log: people are not shown hosts


def test_untagged_name_means_latest_like_ollama() -> None:
    with OllamaTestServer(models={"qwen3:latest": "Hi."}) as server:
        text, _ = run(OllamaBackend().stream(make_request("qwen3", host=server.url)))
    assert text == "Hi."


def test_unreachable_server_is_reported_quickly() -> None:
    port = closed_port()
    error, received = fail_within_deadline(make_request(host=f"http://127.0.0.1:{port}"))

    assert received == []
    assert str(error) == "The Ollama server is unreachable."
    assert error.detail.startswith(f"http://127.0.0.1:{port}: ")
    assert "refused" in error.detail.lower()


def test_connect_that_hangs_is_given_up_within_the_deadline() -> None:
    # A listening socket whose one-slot accept queue is full: the kernel drops further SYNs,
    # so connecting hangs like a firewalled or powered-off host would.
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))

        error, _ = fail_within_deadline(make_request(host=f"http://127.0.0.1:{port}"))

    assert str(error).startswith("The Ollama server is unreachable")
    assert str(port) not in str(error) and str(port) in error.detail


def test_error_line_mid_stream_keeps_text_and_raises(server: OllamaTestServer) -> None:
    server.script("llama3.2:1b", error_after=2, error_message="llama runner process has terminated")
    error, received = fail_within_deadline(make_request(host=server.url))

    assert received == [TextChunk("The"), TextChunk(" quick")]
    assert str(error) == "Ollama error: llama runner process has terminated"


def test_error_before_any_text_is_an_ollama_error(server: OllamaTestServer) -> None:
    server.script("llama3.2:1b", error_after=0, error_message="model requires more system memory")
    error, received = fail_within_deadline(make_request(host=server.url))

    assert received == []
    assert str(error) == "Ollama error: model requires more system memory"


def test_server_that_stops_answering_hits_the_read_timeout() -> None:
    with OllamaTestServer(models={"slow": "tick tock"}, token_delay=3.0) as server:
        error, _ = fail_within_deadline(make_request("slow", host=server.url, timeout=0.5))

    assert str(error) == "Ollama error: the server did not respond within 0.5 s."
    assert error.detail == server.url


def _read_until_closed(connection: socket.socket) -> bytes:
    """What the client sent (its request) until it cut the connection: the server sees
    the disconnect, as Ollama does when a Stop closes the stream."""
    connection.settimeout(5)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except TimeoutError:
        raise AssertionError("the client did not cut the connection") from None
    except OSError:  # reset, or a TLS session cut short: cut all the same
        pass
    return received


def test_a_stop_before_the_response_headers_ends_the_call_at_once() -> None:
    """Ollama sends no headers while it loads a model (minutes, for a big one). A Stop then
    cuts the connection: the call ends within a second, not at the read timeout, and the
    server sees the disconnect."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    host = f"http://127.0.0.1:{listener.getsockname()[1]}"
    cancel = threading.Event()
    try:
        stream = OllamaBackend().stream(make_request(host=host, timeout=30.0), cancel)
        threading.Timer(0.3, cancel.set).start()
        wall = time.monotonic()
        assert list(stream) == []  # cancelled: nothing, and no error
        wall = time.monotonic() - wall
        assert wall < 1.5, f"the Stop waited {wall:.1f} s"
        assert _read_until_closed(held[0]).startswith(b"POST /api/chat ")
    finally:
        for connection in held:
            connection.close()
        listener.close()


def test_a_stop_cuts_an_https_connection_too(monkeypatch) -> None:
    """Over https the TLS socket wraps the TCP one (and detaches it): Stop must cut the
    one in use, or the call waits for the server."""
    import ssl
    import threading

    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    with ca.cert_pem.tempfile() as ca_path:
        monkeypatch.setenv("SSL_CERT_FILE", ca_path)  # httpx trusts the test CA
        listener = socket.create_server(("127.0.0.1", 0))
        held: list[ssl.SSLSocket] = []

        def accept() -> None:
            raw, _ = listener.accept()
            held.append(server_context.wrap_socket(raw, server_side=True))

        threading.Thread(target=accept, daemon=True).start()
        host = f"https://127.0.0.1:{listener.getsockname()[1]}"
        cancel = threading.Event()
        try:
            stream = OllamaBackend().stream(make_request(host=host, timeout=30.0), cancel)
            threading.Timer(0.5, cancel.set).start()
            wall = time.monotonic()
            assert list(stream) == []
            wall = time.monotonic() - wall
            assert wall < 2, f"the Stop waited {wall:.1f} s"
            assert _read_until_closed(held[0]).startswith(b"POST /api/chat ")
        finally:
            for connection in held:
                connection.close()
            listener.close()


def test_unknown_setting_is_rejected(server: OllamaTestServer) -> None:
    with pytest.raises(BackendError, match="unknown Ollama setting.*n_threads"):
        list(OllamaBackend().stream(make_request(host=server.url, n_threads=4)))
    assert server.chat_requests == []


def test_list_models_reports_what_the_server_has() -> None:
    models = {
        "llama3.2:1b": ScriptedModel(size=1_321_098_329),
        "qwen3:8b": ScriptedModel(
            family="qwen3", parameter_size="8.2B", quantization_level="Q4_K_M", size=5_225_376_047
        ),
    }
    with OllamaTestServer(models=models) as server:
        listed = list_models(server.url)

    assert sorted(listed, key=lambda m: m["name"]) == [
        {
            "name": "llama3.2:1b",
            "size": 1_321_098_329,
            "family": "llama",
            "parameter_size": "1.2B",
            "quantization_level": "Q4_K_M",
        },
        {
            "name": "qwen3:8b",
            "size": 5_225_376_047,
            "family": "qwen3",
            "parameter_size": "8.2B",
            "quantization_level": "Q4_K_M",
        },
    ]


def test_list_models_uses_ollama_host_when_no_host_is_given(
    server: OllamaTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    assert [m["name"] for m in list_models(None)] == ["llama3.2:1b"]
    assert ("GET", "/api/tags") in server.paths


def test_list_models_on_an_unreachable_server_raises_backend_error() -> None:
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"^The Ollama server is unreachable") as raised:
        list_models(f"127.0.0.1:{port}")
    assert raised.value.detail.startswith(f"http://127.0.0.1:{port}: ")
    assert time.monotonic() - started < ERROR_DEADLINE_S
