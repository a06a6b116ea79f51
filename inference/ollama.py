"""Ollama backend: streams chat completions from an Ollama server over its HTTP API."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Generator, Hashable
from typing import Any, cast

import httpx
import ollama
import pydantic

from inference.base import (
    BackendError,
    Finished,
    GenerationRequest,
    ModelSpec,
    SamplingOptions,
    StreamItem,
    TextChunk,
    Usage,
)

# Connecting must fail fast so a stopped or unreachable server is reported within 5 s; reading
# may legitimately take long (a cold model load on a busy server), so it has its own limit.
CONNECT_TIMEOUT_S = 4.0
DEFAULT_READ_TIMEOUT_S = 300.0

# Settings an Ollama model may carry in ``ModelSpec.settings``. Unknown keys are an error, like
# unknown sampling options, so a typo does not silently do nothing.
_SETTINGS = ("host", "timeout", "num_ctx", "n_ctx", "keep_alive", "parallel")
# Streams one worker process holds at once per server when a model says nothing: Ollama
# batches them itself (OLLAMA_NUM_PARALLEL).
DEFAULT_PARALLEL = 4

# What the client and httpx raise for a server that is down, slow, or not speaking Ollama's API.
# Anything else is a bug and propagates as it is.
_TRANSPORT_ERRORS = (
    httpx.HTTPError,
    ConnectionError,
    json.JSONDecodeError,
    pydantic.ValidationError,
    ollama.RequestError,
)


class OllamaBackend:
    """Talks to an Ollama server; keeps no state, so one instance serves every request."""

    name = "ollama"
    continues_partial = False  # Ollama's chat API cannot be told to go on from a prefix

    def batch_key(self, model: ModelSpec) -> Hashable:
        """Answers for the same server share a worker process: each is one HTTP stream."""
        return (self.name, _validate_settings(model.settings).get("host"))

    def loaded(self) -> list[str]:
        return []  # the Ollama server loads and unloads its models itself

    def max_concurrent(self, model: ModelSpec) -> int:
        parallel = _validate_settings(model.settings).get("parallel", DEFAULT_PARALLEL)
        if not isinstance(parallel, int) or parallel < 1:
            raise BackendError(
                f"Ollama setting 'parallel' must be a positive integer, not {parallel!r}"
            )
        return parallel

    def stream(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> Generator[StreamItem, None, None]:
        settings = _validate_settings(request.model.settings)
        model = request.model.target
        if not model:
            raise BackendError("Ollama model name is empty")
        connections = _Connections()
        client = _make_client(settings.get("host"), settings.get("timeout"), connections.watch)
        where = _base_url(client, settings.get("host"))
        options = _options(request.options, settings)
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        chat_kwargs: dict[str, Any] = {}
        if "keep_alive" in settings:
            chat_kwargs["keep_alive"] = settings["keep_alive"]
        finished = threading.Event()
        if cancel is not None:
            # Ollama can be silent for a long time (loading a model): cutting the
            # connection from here breaks the blocked read, and Ollama sees the disconnect.
            threading.Thread(
                target=_close_when_cancelled, args=(cancel, finished, connections), daemon=True
            ).start()
        try:
            # stream=True returns a generator (the stubs say Iterator): it can be closed.
            parts = cast(
                Generator[ollama.ChatResponse, None, None],
                client.chat(
                    model=model, messages=messages, stream=True, options=options, **chat_kwargs
                ),
            )
            try:
                for part in parts:
                    content = part.message.content if part.message else None
                    if content:
                        yield TextChunk(content)
                    if part.done:
                        yield Finished(
                            reason=_reason(part.done_reason),
                            usage=Usage(
                                prompt_tokens=part.prompt_eval_count or 0,
                                completion_tokens=part.eval_count or 0,
                            ),
                        )
                        return
            finally:
                # The client's stream is a generator wrapping ``httpx.Client.stream(...)``;
                # closing it exits that context manager, which closes the HTTP response and so
                # the connection: Ollama sees the disconnect and stops generating. Without this
                # the close would depend on garbage collection.
                parts.close()
            raise BackendError("Ollama error: the stream ended before the answer did", detail=where)
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise BackendError(
                    f"Ollama model {model!r} is not available on its server: {exc.error}",
                    detail=where,
                ) from exc
            raise BackendError(f"Ollama error: {exc.error}") from exc
        except _TRANSPORT_ERRORS as exc:
            if cancel is not None and cancel.is_set():
                return  # we closed the connection ourselves
            raise _transport_error(exc, where, settings.get("timeout")) from exc
        finally:
            finished.set()
            client.close()


class _Connections:
    """The sockets of one client's requests, as httpcore opens them (its ``trace``
    extension, set by a request hook): they exist before any response does, so a Stop
    can cut a request still waiting for its response headers (Ollama loading a model)."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def watch(self, request: httpx.Request) -> None:
        request.extensions["trace"] = self._trace

    # Where httpcore hands over a new stream: the TCP connection, then (https) the TLS one
    # wrapped around it, which detaches the first socket.
    _OPENED = frozenset({"connection.connect_tcp.complete", "connection.start_tls.complete"})

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event in self._OPENED:
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with self._lock:
                    self._sockets.append(sock)

    def cut(self) -> bool:
        """Shut the connection down; False while there is none to shut yet. Closing a
        socket does not wake a read blocked on it in another thread; shutting it down
        does."""
        with self._lock:
            sockets = list(self._sockets)
        cut = False
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                cut = True
            except OSError:  # detached by TLS, or already closed
                pass
        return cut


def _close_when_cancelled(
    cancel: threading.Event, finished: threading.Event, connections: _Connections
) -> None:
    while not finished.is_set():
        if not cancel.wait(0.1):
            continue
        if connections.cut():
            return
        finished.wait(0.1)  # cancelled while connecting: look again, without spinning


def list_models(host: str | None) -> list[dict[str, Any]]:
    """Models installed on the Ollama server at ``host`` (None: the client's OLLAMA_HOST rule)."""
    client = _make_client(host or None, None)
    where = _base_url(client, host)
    try:
        listing = client.list()
    except ollama.ResponseError as exc:
        raise BackendError(f"Ollama error: {exc.error}") from exc
    except _TRANSPORT_ERRORS as exc:
        raise _transport_error(exc, where, None) from exc
    finally:
        client.close()
    models = []
    for item in listing.models:
        details = item.details
        models.append(
            {
                # The client (>= 0.4) exposes the tag as ``model``; /api/tags sends it as both
                # ``name`` and ``model``.
                "name": item.model,
                "size": int(item.size) if item.size is not None else None,
                "family": details.family if details else None,
                "parameter_size": details.parameter_size if details else None,
                "quantization_level": details.quantization_level if details else None,
            }
        )
    return models


def _validate_settings(settings: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise BackendError(
            f"unknown Ollama setting(s) {', '.join(unknown)}; allowed: {', '.join(_SETTINGS)}"
        )
    host = settings.get("host")
    if host is not None and not isinstance(host, str):
        raise BackendError(f"Ollama setting 'host' must be a string, got {host!r}")
    timeout = settings.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise BackendError(f"Ollama setting 'timeout' must be a positive number, got {timeout!r}")
    for key in ("num_ctx", "n_ctx"):
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise BackendError(f"Ollama setting {key!r} must be an integer, got {value!r}")
    return settings


def _make_client(
    host: str | None,
    timeout: float | None,
    on_request: Callable[[httpx.Request], None] | None = None,
) -> ollama.Client:
    # host=None lets the client apply its own OLLAMA_HOST convention (and default port 11434).
    limits = httpx.Timeout(timeout or DEFAULT_READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    hooks = {"request": [on_request]} if on_request else {}
    # Never follow a redirect: a server could send the worker anywhere (cloud metadata).
    return ollama.Client(
        host=host or None, timeout=limits, event_hooks=hooks, follow_redirects=False
    )


def _base_url(client: ollama.Client, host: str | None) -> str:
    # The client resolves host/OLLAMA_HOST itself; read the result back for error messages
    # (private attribute, so fall back to what we were given).
    base = getattr(getattr(client, "_client", None), "base_url", None)
    return str(base).rstrip("/") if base is not None else (host or "the default Ollama host")


def _options(options: SamplingOptions, settings: dict[str, Any]) -> dict[str, Any]:
    mapped: dict[str, Any] = {
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": options.top_k,
        "repeat_penalty": options.repeat_penalty,
        "num_predict": options.max_tokens,
    }
    if options.seed is not None:
        mapped["seed"] = options.seed
    if options.stop:
        mapped["stop"] = list(options.stop)
    num_ctx = settings.get("num_ctx", settings.get("n_ctx"))
    if num_ctx is not None:
        mapped["num_ctx"] = num_ctx
    return mapped


def _reason(done_reason: str | None) -> str:
    # Ollama says "length" when num_predict (or the context) cut the answer; anything else
    # ("stop", or none from old servers) is a natural end.
    return "length" if done_reason == "length" else "stop"


def _transport_error(exc: BaseException, where: str, timeout: float | None) -> BackendError:
    """Turn a client/transport exception into a message a user can act on."""
    # What a person reads names no host and quotes no transport message: those are in
    # ``detail``, for the worker's log and the admins' commands.
    if isinstance(exc, httpx.ConnectTimeout):
        return BackendError(
            f"The Ollama server is unreachable: no connection within {CONNECT_TIMEOUT_S:g} s.",
            detail=where,
        )
    if isinstance(exc, httpx.ConnectError):
        return BackendError("The Ollama server is unreachable.", detail=f"{where}: {exc}")
    if isinstance(exc, ConnectionError):
        # ollama >= 0.4.5 replaces httpx.ConnectError with a generic ConnectionError
        # ("Failed to connect to Ollama...") but keeps the original as the context.
        reason = exc.__context__ if isinstance(exc.__context__, httpx.HTTPError) else exc
        return BackendError("The Ollama server is unreachable.", detail=f"{where}: {reason}")
    if isinstance(exc, httpx.TimeoutException):
        limit = timeout or DEFAULT_READ_TIMEOUT_S
        return BackendError(
            f"Ollama error: the server did not respond within {limit:g} s.", detail=where
        )
    if isinstance(exc, httpx.HTTPError):
        return BackendError(
            "Ollama error: the connection to the server failed.", detail=f"{where}: {exc}"
        )
    if isinstance(exc, json.JSONDecodeError | pydantic.ValidationError):
        return BackendError(
            "Ollama error: the server sent a response that is not Ollama's API.", detail=where
        )
    if isinstance(exc, ollama.RequestError):
        return BackendError(f"Ollama error: {exc.error}")
    return BackendError("Ollama error: the request failed.", detail=f"{where}: {exc!r}")
