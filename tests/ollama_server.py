"""A stand-in Ollama server for tests: Ollama's HTTP API over real sockets, standard library only.

Usage::

    with OllamaTestServer(models={"llama3.2:1b": "Hello there!"}, token_delay=0.05) as server:
        backend.stream(... ModelSpec("ollama", "llama3.2:1b", {"host": server.url}) ...)
        server.chat_requests[-1]["options"]["num_predict"]
        server.wait_for_disconnect(timeout=5)

    # Model management: a registry to pull from, and the server's own faults.
    registry = {"qwen3:0.6b": PullableModel(layer_sizes=(5_000, 120), model=ScriptedModel())}
    with OllamaTestServer(registry=registry, pull_step_delay=0.05) as server:
        ollama.Client(server.url).pull("qwen3:0.6b")  # streams progress, then it is installed
        server.wait_for_pull_disconnect(timeout=5)      # a client that gave up mid-pull
        server.down(); server.up()                      # connection refused, then back
        server.redirect_to = "http://elsewhere:1234"    # every request answered with a 302

Protocol details follow ollama/ollama ``server/routes.go`` (ChatHandler, PullHandler,
ShowHandler, DeleteHandler, CopyHandler, ListHandler, streamResponse, waitForStream),
``server/images.go`` (PullModel), ``types/model/name.go`` (ParseName) and ``docs/api.md``:

* ``POST /api/chat`` streams unless ``"stream": false``: NDJSON lines with
  ``Content-Type: application/x-ndjson`` and chunked transfer encoding (Go's net/http streams
  without a Content-Length that way), then a final ``"done": true`` line with ``done_reason`` and
  the counters and durations (nanoseconds).
* A missing model is HTTP 404 ``{"error": "model 'NAME' not found"}`` (the wording of current
  Ollama; releases before mid-2025 said ``model "NAME" not found, try pulling it first``); no
  model is 400 ``{"error": "model is required"}``; an unreadable body is 400.
* An error before any content is an HTTP error status with ``{"error": ...}``; an error after
  content has been sent is one more NDJSON line ``{"error": ...}`` and the end of the stream.
* Names without a tag mean ``:latest``, as in Ollama; ``registry.ollama.ai/library/x`` is ``x``.
* ``POST /api/pull`` streams ``{"status": "pulling manifest"}``, then per layer
  ``{"status": "pulling <12 hex>", "digest": "sha256:...", "total": N, "completed": k}`` lines,
  then ``verifying sha256 digest``, ``writing manifest``, ``success``. A name the registry does
  not have fails after the first line, so as one more line:
  ``{"error": "pull model manifest: file does not exist"}`` (images.go wraps os.ErrNotExist,
  which the registry's 404 becomes). A name Ollama cannot parse is 400
  ``{"error": "invalid model name"}``. With ``"stream": false`` the answer is the last status
  object, or the error with status 500 (waitForStream).
* ``POST /api/show`` answers ``modelfile``, ``parameters``, ``template``, ``details``,
  ``model_info`` (GGUF keys: ``general.architecture``, ``general.parameter_count``,
  ``<arch>.context_length``...), ``capabilities``, ``modified_at``.
* ``DELETE /api/delete`` answers 200 with an empty body; a missing model is 404
  ``model 'NAME' not found``; an unparsable name 400 ``name "NAME" is invalid``.
* ``POST /api/copy`` answers 200 with an empty body; an unparsable source or destination is 400
  ``source "NAME" is invalid`` / ``destination "NAME" is invalid``; a missing source is 404
  ``model "NAME" not found`` (Go's %q here, not the quotes of the other handlers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import select
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NOT_FOUND = "model '{name}' not found"
OLLAMA_VERSION = "0.12.6"
# errtypes.InvalidModelNameErrMsg, for a pull of a name ParseName refuses.
INVALID_NAME = "invalid model name"
# What PullModel says when the registry has no manifest for the name (a 404 there).
PULL_NOT_FOUND = "pull model manifest: file does not exist"
# DeleteHandler's and CopyHandler's words; Go's %q quotes the name.
DELETE_INVALID = "name {quoted} is invalid"
COPY_SOURCE_INVALID = "source {quoted} is invalid"
COPY_DESTINATION_INVALID = "destination {quoted} is invalid"
COPY_NOT_FOUND = "model {quoted} not found"


@dataclass
class ScriptedModel:
    """What one installed model answers, and how it misbehaves when asked to."""

    reply: str = "Hello! How can I help you today?"
    family: str = "llama"
    parameter_size: str = "1.2B"
    quantization_level: str = "Q4_K_M"
    size: int = 1_321_098_329
    # Send {"error": error_message} after this many content chunks (0: fail before any content).
    error_after: int | None = None
    error_message: str = "an error was encountered while running the model: unexpected EOF"
    # Overrides the server's token_delay for this model.
    token_delay: float | None = None
    # What /api/show tells about it (GGUF metadata, the Modelfile's parts).
    parameter_count: int = 1_235_814_432
    context_length: int = 131_072
    template: str = (
        "<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"stop": ["<|start_header_id|>", "<|eot_id|>"]}
    )
    capabilities: tuple[str, ...] = ("completion", "tools")

    def tokens(self) -> list[str]:
        # Word-ish pieces with their leading space, like real tokenizers emit (" world").
        return re.findall(r"\s*\S+|\s+", self.reply)


@dataclass
class PullableModel:
    """A model the pretend registry holds: what a pull downloads and then installs."""

    # Bytes per layer, in the manifest's order (weights first, then template, params...).
    layer_sizes: tuple[int, ...] = (2_019_377_376, 1_429, 7_711, 96, 561)
    # What the model does once installed.
    model: ScriptedModel = field(default_factory=ScriptedModel)
    # Progress lines per layer while it downloads (a finished layer reports completed == total).
    steps_per_layer: int = 4

    def digests(self, name: str) -> list[str]:
        return [
            "sha256:" + hashlib.sha256(f"{name} layer {i} {size}".encode()).hexdigest()
            for i, size in enumerate(self.layer_sizes)
        ]


_DEFAULT_HOST = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"
_MISSING = "!MISSING!"  # what Ollama's parser puts in a part a separator promised
# isValidPart: a letter, digit or underscore, then those and "-", plus "." except in a
# namespace and ":" only in a host; at most 350 characters for a host, 80 for the others.
_HOST_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


def _parse_name(name: str) -> tuple[str, str, str, str] | None:
    """Ollama's model.ParseName then IsValid: (host, namespace, model, tag), or None."""
    rest, tag = name, ""
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = _cut_last(rest, ":")
    if "/" not in rest:
        host, namespace, model = "", "", rest
    else:
        rest, model = _cut_last(rest, "/")
        if "/" in rest:
            rest, namespace = _cut_last(rest, "/")
            host = rest.split("://", 1)[1] if "://" in rest else rest
        else:
            host, namespace = "", rest
    host, namespace, tag = host or _DEFAULT_HOST, namespace or _DEFAULT_NAMESPACE, tag or "latest"
    checks = ((_HOST_PART, host), (_NAMESPACE_PART, namespace), (_PART, model), (_PART, tag))
    if not all(pattern.fullmatch(part) for pattern, part in checks):
        return None
    return host, namespace, model, tag


def _cut_last(text: str, sep: str) -> tuple[str, str]:
    before, _, after = text.rpartition(sep)
    return before or _MISSING, after or _MISSING


def _canonical(name: str) -> str:
    # As /api/tags shows names (DisplayShortest): the default registry and namespace left out,
    # the tag always there.
    parsed = _parse_name(name)
    if parsed is None:
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    host, namespace, model, tag = parsed
    if host.lower() != _DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != _DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def _go_quote(text: str) -> str:
    # Go's %q: double quotes, backslash escapes (close enough to JSON's for test names).
    return json.dumps(text, ensure_ascii=False)


def _now() -> str:
    # RFC 3339 in UTC, as Ollama sends it ("2025-10-17T23:14:07.414671Z").
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _State:
    models: dict[str, ScriptedModel]
    token_delay: float
    registry: dict[str, PullableModel] = field(default_factory=dict)
    pull_step_delay: float = 0.0
    redirect_to: str | None = None
    chat_requests: list[dict[str, Any]] = field(default_factory=list)
    pull_requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[tuple[str, str]] = field(default_factory=list)
    disconnects: int = 0
    completed: int = 0
    pull_disconnects: int = 0
    pulls_completed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    disconnected: threading.Event = field(default_factory=threading.Event)
    pull_disconnected: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    down: threading.Event = field(default_factory=threading.Event)

    def client_left(self) -> bool:
        """Whether a broken connection was the client's doing, not ours (stop, down)."""
        return not self.stopping.is_set() and not self.down.is_set()


class OllamaTestServer:
    """Ollama's HTTP API on 127.0.0.1, in a background thread; a context manager."""

    def __init__(
        self,
        models: Mapping[str, str | ScriptedModel] | None = None,
        *,
        token_delay: float = 0.0,
        registry: Mapping[str, PullableModel] | None = None,
        pull_step_delay: float = 0.0,
    ) -> None:
        """``models`` are installed; ``registry`` holds what ``/api/pull`` can fetch (names
        canonical as in Ollama); ``pull_step_delay`` is the pause before each pull line, so a
        test can act mid-pull."""
        scripted = {
            _canonical(name): ScriptedModel(reply=m) if isinstance(m, str) else m
            for name, m in (models or {"llama3.2:1b": ScriptedModel()}).items()
        }
        self._state = _State(
            models=scripted,
            token_delay=token_delay,
            registry={_canonical(name): m for name, m in (registry or {}).items()},
            pull_step_delay=pull_step_delay,
        )
        self._httpd: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None  # kept while down, for url and up()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> OllamaTestServer:
        self._listen(0)
        return self

    def stop(self) -> None:
        self._state.stopping.set()
        self._close_listener()

    def down(self) -> None:
        """Stop as a killed Ollama does: open connections are cut (not counted as clients'
        disconnects) and connecting is refused. ``url`` stays, for :meth:`up`."""
        self._state.down.set()
        httpd = self._httpd
        self._close_listener()
        if httpd is not None:
            httpd.cut_connections()

    def up(self) -> None:
        """Listen again on the same port after :meth:`down`."""
        assert self._address is not None, "server never started"
        self._listen(self._address[1])
        self._state.down.clear()

    def _listen(self, port: int) -> None:
        httpd = _QuietServer(("127.0.0.1", port), _Handler)
        httpd.daemon_threads = True
        httpd.state = self._state  # type: ignore[attr-defined]
        self._httpd = httpd
        host, bound_port = httpd.server_address[:2]
        self._address = (str(host), int(bound_port))
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _close_listener(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OllamaTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests read -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._address is not None, "server not started"
        host, port = self._address
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        assert self._address is not None, "server not started"
        return self._address[1]

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of every POST /api/chat received, oldest first."""
        with self._state.lock:
            return list(self._state.chat_requests)

    @property
    def paths(self) -> list[tuple[str, str]]:
        """(method, path) of every request received."""
        with self._state.lock:
            return list(self._state.paths)

    @property
    def disconnects(self) -> int:
        """Chat streams the client closed before the final ``done`` line was sent."""
        with self._state.lock:
            return self._state.disconnects

    @property
    def completed(self) -> int:
        """Chat streams sent through to the final ``done`` line."""
        with self._state.lock:
            return self._state.completed

    def wait_for_disconnect(self, timeout: float) -> bool:
        return self._state.disconnected.wait(timeout)

    @property
    def pull_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of every POST /api/pull received, oldest first."""
        with self._state.lock:
            return list(self._state.pull_requests)

    @property
    def pull_disconnects(self) -> int:
        """Pull streams the client closed before the final ``success`` line was sent."""
        with self._state.lock:
            return self._state.pull_disconnects

    @property
    def pulls_completed(self) -> int:
        """Pulls that installed their model (``success`` sent)."""
        with self._state.lock:
            return self._state.pulls_completed

    def wait_for_pull_disconnect(self, timeout: float) -> bool:
        return self._state.pull_disconnected.wait(timeout)

    @property
    def installed(self) -> list[str]:
        """Names of the installed models, as /api/tags lists them."""
        with self._state.lock:
            return list(self._state.models)

    # -- scripting -----------------------------------------------------------------------------

    def script(self, name: str, **changes: Any) -> ScriptedModel:
        """Change how model ``name`` behaves (adding it if missing); returns the new script."""
        key = _canonical(name)
        with self._state.lock:
            current = self._state.models.get(key, ScriptedModel())
            self._state.models[key] = updated = replace(current, **changes)
        return updated

    def remove_model(self, name: str) -> None:
        with self._state.lock:
            self._state.models.pop(_canonical(name), None)

    @property
    def token_delay(self) -> float:
        return self._state.token_delay

    @token_delay.setter
    def token_delay(self, value: float) -> None:
        self._state.token_delay = value

    def publish(self, name: str, model: PullableModel | None = None) -> PullableModel:
        """Put ``name`` in the registry that /api/pull fetches from; returns its entry."""
        entry = model or PullableModel()
        with self._state.lock:
            self._state.registry[_canonical(name)] = entry
        return entry

    @property
    def pull_step_delay(self) -> float:
        return self._state.pull_step_delay

    @pull_step_delay.setter
    def pull_step_delay(self, value: float) -> None:
        self._state.pull_step_delay = value

    @property
    def redirect_to(self) -> str | None:
        """When set, every request is answered ``302 Found`` with ``Location`` this base URL
        plus the request's path (a proxy or a moved server)."""
        return self._state.redirect_to

    @redirect_to.setter
    def redirect_to(self, value: str | None) -> None:
        self._state.redirect_to = value


class _QuietServer(ThreadingHTTPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        # A stopped process's connections die with it; shutting a socket down also wakes a
        # handler blocked reading from it.
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (tests do, on purpose) is not a server error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _ClientGone(Exception):
    """The client closed the connection while we were streaming."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses, like Go's net/http
    server_version = "ollama-test"
    sys_version = ""

    @property
    def state(self) -> _State:
        return self.server.state  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # keep test output clean

    # -- routing -------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._record()
        if self._redirected(head=True):
            return
        if self.path == "/":
            self._send_text(200, "Ollama is running", head=True)
        elif self.path == "/api/version":
            self._send_json(200, {"version": OLLAMA_VERSION}, head=True)
        else:
            self._send_text(404, "404 page not found", head=True)

    def do_GET(self) -> None:
        self._record()
        if self._redirected():
            return
        if self.path == "/":
            self._send_text(200, "Ollama is running")
        elif self.path == "/api/version":
            self._send_json(200, {"version": OLLAMA_VERSION})
        elif self.path == "/api/tags":
            self._send_json(200, {"models": [self._tag(n, m) for n, m in self._models()]})
        else:
            self._send_text(404, "404 page not found")

    def do_POST(self) -> None:
        self._record()
        if self._redirected():
            return
        body = self._read_json()
        if body is None:
            return
        if self.path == "/api/chat":
            self._chat(body)
        elif self.path == "/api/show":
            self._show(body)
        elif self.path == "/api/pull":
            self._pull(body)
        elif self.path == "/api/copy":
            self._copy(body)
        else:
            self._send_text(404, "404 page not found")

    def do_DELETE(self) -> None:
        self._record()
        if self._redirected():
            return
        body = self._read_json()
        if body is None:
            return
        if self.path == "/api/delete":
            self._delete(body)
        else:
            self._send_text(404, "404 page not found")

    def _redirected(self, *, head: bool = False) -> bool:
        target = self.state.redirect_to
        if target is None:
            return False
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # keep the connection's framing intact
        location = target.rstrip("/") + self.path
        # What Go's http.Redirect writes.
        data = f'<a href="{location}">Found</a>.\n\n'.encode()
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        return True

    # -- endpoints -----------------------------------------------------------------------------

    def _chat(self, body: dict[str, Any]) -> None:
        with self.state.lock:
            self.state.chat_requests.append(body)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            self._send_json(400, {"error": "model is required"})
            return
        model = dict(self._models()).get(_canonical(name))
        if model is None:
            self._send_json(404, {"error": NOT_FOUND.format(name=name)})
            return
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            self._send_json(400, {"error": "messages must be a list of objects"})
            return
        options = body.get("options") or {}
        if not isinstance(options, dict):
            self._send_json(400, {"error": "options must be an object"})
            return
        if not messages:
            # No messages only loads the model; Ollama answers with one JSON object.
            self._send_json(
                200,
                {
                    "model": name,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "load",
                },
            )
            return

        pieces, done_reason = _generate(model.tokens(), options)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in messages)
        delay = model.token_delay if model.token_delay is not None else self.state.token_delay
        final = {
            "model": name,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": done_reason,
            "total_duration": 0,
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": prompt_tokens * 100_000,
            "eval_count": len(pieces),
            "eval_duration": len(pieces) * 1_000_000,
        }
        failing = model.error_after is not None and model.error_after <= len(pieces)

        if body.get("stream", True) is False:
            if failing:
                self._send_json(500, {"error": model.error_message})
                return
            if delay and self.state.stopping.wait(delay * len(pieces)):
                return
            final["message"]["content"] = "".join(pieces)
            final["total_duration"] = final["load_duration"] + final["eval_duration"]
            self._send_json(200, final)
            return

        if failing and model.error_after == 0:
            # Nothing written yet: Ollama answers with the error's status and a JSON body.
            self._send_json(500, {"error": model.error_message})
            return
        self._stream(name, pieces, final, delay, model.error_after, model.error_message)

    def _stream(
        self,
        name: str,
        pieces: list[str],
        final: dict[str, Any],
        delay: float,
        error_after: int | None,
        error_message: str,
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent_final = False
        try:
            for index, piece in enumerate(pieces):
                if error_after is not None and index == error_after:
                    self._write_chunk({"error": error_message})
                    self._end_chunks()
                    return
                if delay and self.state.stopping.wait(delay):
                    raise _ClientGone  # server shutting down: drop the connection
                self._check_peer()
                self._write_chunk(
                    {
                        "model": name,
                        "created_at": _now(),
                        "message": {"role": "assistant", "content": piece},
                        "done": False,
                    }
                )
            if error_after is not None and error_after == len(pieces):
                self._write_chunk({"error": error_message})
                self._end_chunks()
                return
            self._check_peer()
            final["created_at"] = _now()
            final["total_duration"] = final["load_duration"] + final["eval_duration"]
            # Count before writing, so a client that has read the done line sees it counted.
            with self.state.lock:
                self.state.completed += 1
            sent_final = True
            self._write_chunk(final)
            self._end_chunks()
        except _ClientGone:
            self.close_connection = True
            if sent_final:
                return  # the client had everything it needed; closing now is normal
            if self.state.client_left():
                with self.state.lock:
                    self.state.disconnects += 1
                self.state.disconnected.set()

    def _show(self, body: dict[str, Any]) -> None:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            self._send_json(400, {"error": "model is required"})
            return
        model = dict(self._models()).get(_canonical(name))
        if model is None:
            self._send_json(404, {"error": NOT_FOUND.format(name=name)})
            return
        arch = model.family
        blob = "sha256-" + hashlib.sha256(_canonical(name).encode()).hexdigest()
        parameters = [
            f"{key:<30} {_go_quote(v) if isinstance(v, str) else json.dumps(v)}"
            for key, values in model.parameters.items()
            for v in (values if isinstance(values, list) else [values])
        ]
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {_canonical(name)}\n\n"
            f"FROM /root/.ollama/models/blobs/{blob}\n"
            + (f'TEMPLATE """{model.template}"""\n' if model.template else "")
            + "".join(f"PARAMETER {line}\n" for line in parameters)
        )
        self._send_json(
            200,
            {
                "modelfile": modelfile,
                "parameters": "\n".join(parameters),
                "template": model.template,
                "details": self._details(model),
                "model_info": {
                    "general.architecture": arch,
                    "general.file_type": 15,
                    "general.parameter_count": model.parameter_count,
                    "general.quantization_version": 2,
                    f"{arch}.context_length": model.context_length,
                    f"{arch}.embedding_length": 2048,
                    f"{arch}.block_count": 16,
                    "tokenizer.ggml.model": "gpt2",
                },
                "tensors": [],
                "capabilities": list(model.capabilities),
                "modified_at": _now(),
            },
        )

    def _pull(self, body: dict[str, Any]) -> None:
        with self.state.lock:
            self.state.pull_requests.append(body)
        raw = body.get("model") or body.get("name") or ""
        if not isinstance(raw, str) or _parse_name(raw) is None:
            self._send_json(400, {"error": INVALID_NAME})
            return
        name = _canonical(raw)
        with self.state.lock:
            entry = self.state.registry.get(name)
        lines = self._pull_lines(name, entry)
        delay = self.state.pull_step_delay
        if body.get("stream", True) is False:
            # waitForStream: the whole pull, then its last status or its error (500).
            last: dict[str, Any] = {}
            for index, line in enumerate(lines):
                if index and delay and self.state.stopping.wait(delay):
                    return
                if "error" in line:
                    self._send_json(500, line)
                    return
                last = line
            self._send_json(200, last)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for index, line in enumerate(lines):
                if index and delay and self.state.stopping.wait(delay):
                    raise _ClientGone  # server shutting down: drop the connection
                self._check_peer()
                self._write_chunk(line)
            self._end_chunks()
        except _ClientGone:
            self.close_connection = True
            if self.state.client_left():
                with self.state.lock:
                    self.state.pull_disconnects += 1
                self.state.pull_disconnected.set()

    def _pull_lines(self, name: str, entry: PullableModel | None) -> Iterator[dict[str, Any]]:
        """PullModel's progress callbacks, in order; installs the model before ``success``."""
        yield {"status": "pulling manifest"}
        if entry is None:
            yield {"error": PULL_NOT_FOUND}
            return
        with self.state.lock:
            already = name in self.state.models
        steps = max(1, entry.steps_per_layer)
        for digest, size in zip(entry.digests(name), entry.layer_sizes, strict=True):
            status = f"pulling {digest[7:19]}"
            # A blob already on disk reports itself complete at once (downloadBlob's cache hit).
            for step in [steps] if already else range(steps + 1):
                completed = size * step // steps
                yield {"status": status, "digest": digest, "total": size, "completed": completed}
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        with self.state.lock:
            self.state.models[name] = replace(entry.model, size=sum(entry.layer_sizes))
            self.state.pulls_completed += 1
        yield {"status": "success"}

    def _delete(self, body: dict[str, Any]) -> None:
        raw = body.get("model") or body.get("name") or ""
        if not isinstance(raw, str) or _parse_name(raw) is None:
            self._send_json(400, {"error": DELETE_INVALID.format(quoted=_go_quote(str(raw)))})
            return
        with self.state.lock:
            removed = self.state.models.pop(_canonical(raw), None)
        if removed is None:
            self._send_json(404, {"error": NOT_FOUND.format(name=raw)})
            return
        self._send_empty(200)

    def _copy(self, body: dict[str, Any]) -> None:
        source, destination = body.get("source"), body.get("destination")
        if not isinstance(source, str) or _parse_name(source) is None:
            message = COPY_SOURCE_INVALID.format(quoted=_go_quote(str(source)))
            self._send_json(400, {"error": message})
            return
        if not isinstance(destination, str) or _parse_name(destination) is None:
            message = COPY_DESTINATION_INVALID.format(quoted=_go_quote(str(destination)))
            self._send_json(400, {"error": message})
            return
        with self.state.lock:
            model = self.state.models.get(_canonical(source))
            if model is not None:
                self.state.models[_canonical(destination)] = replace(model)
        if model is None:
            self._send_json(404, {"error": COPY_NOT_FOUND.format(quoted=_go_quote(source))})
            return
        self._send_empty(200)

    # -- helpers -------------------------------------------------------------------------------

    def _models(self) -> list[tuple[str, ScriptedModel]]:
        with self.state.lock:
            return list(self.state.models.items())

    @staticmethod
    def _details(model: ScriptedModel) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": model.family,
            "families": [model.family],
            "parameter_size": model.parameter_size,
            "quantization_level": model.quantization_level,
        }

    def _tag(self, name: str, model: ScriptedModel) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": _now(),
            "size": model.size,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": self._details(model),
        }

    def _record(self) -> None:
        with self.state.lock:
            self.state.paths.append((self.command, self.path))

    def _read_json(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            self._send_json(400, {"error": "missing request body"})
            return None
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            self._send_json(400, {"error": f"invalid character in request body: {exc.msg}"})
            return None
        if not isinstance(body, dict):
            self._send_json(400, {"error": "json: cannot unmarshal into Go value of type object"})
            return None
        return body

    def _send_json(self, status: int, payload: dict[str, Any], *, head: bool = False) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()  # compact, as Go's encoder
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _send_empty(self, status: int) -> None:
        # A gin handler that writes nothing: the status, no body.
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_text(self, status: int, text: str, *, head: bool = False) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _write_chunk(self, payload: dict[str, Any]) -> None:
        line = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        except OSError as exc:  # BrokenPipeError, ConnectionResetError
            raise _ClientGone from exc

    def _end_chunks(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc

    def _check_peer(self) -> None:
        # A write into a closed connection can still succeed (it lands in the kernel buffer),
        # so look for the client's FIN directly: readable with nothing to read means closed.
        # The client sends nothing else while it waits for the answer.
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                raise _ClientGone
        except OSError as exc:
            raise _ClientGone from exc


def _generate(tokens: list[str], options: dict[str, Any]) -> tuple[list[str], str]:
    """The pieces to send and the done_reason, honouring num_predict and stop like Ollama."""
    num_predict = options.get("num_predict")
    stops = [s for s in options.get("stop") or [] if isinstance(s, str) and s]
    pieces: list[str] = []
    text = ""
    for token in tokens:
        # num_predict < 0 means "no limit" in Ollama (-1 infinite, -2 fill the context).
        if isinstance(num_predict, int) and num_predict >= 0 and len(pieces) >= num_predict:
            return pieces, "length"
        candidate = text + token
        hits = [candidate.find(s, max(0, len(text) - len(s) + 1)) for s in stops]
        hits = [h for h in hits if h >= 0]
        if hits:
            cut = min(hits) - len(text)
            if cut > 0:
                pieces.append(token[:cut])
            return pieces, "stop"
        pieces.append(token)
        text = candidate
    return pieces, "stop"
