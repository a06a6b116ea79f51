"""A stand-in Ollama server for tests: Ollama's HTTP API over real sockets, standard library only.

Usage::

    with OllamaTestServer(models={"llama3.2:1b": "Hello there!"}, token_delay=0.05) as server:
        backend.stream(... ModelSpec("ollama", "llama3.2:1b", {"host": server.url}) ...)
        server.chat_requests[-1]["options"]["num_predict"]
        server.wait_for_disconnect(timeout=5)

Protocol details follow ollama/ollama ``server/routes.go`` (ChatHandler, ShowHandler, ListHandler,
streamResponse) and ``docs/api.md``:

* ``POST /api/chat`` streams unless ``"stream": false``: NDJSON lines with
  ``Content-Type: application/x-ndjson`` and chunked transfer encoding (Go's net/http streams
  without a Content-Length that way), then a final ``"done": true`` line with ``done_reason`` and
  the counters and durations (nanoseconds).
* A missing model is HTTP 404 ``{"error": "model 'NAME' not found"}`` (the wording of current
  Ollama; releases before mid-2025 said ``model "NAME" not found, try pulling it first``); no
  model is 400 ``{"error": "model is required"}``; an unreadable body is 400.
* An error before any content is an HTTP error status with ``{"error": ...}``; an error after
  content has been sent is one more NDJSON line ``{"error": ...}`` and the end of the stream.
* Names without a tag mean ``:latest``, as in Ollama.
"""

from __future__ import annotations

import hashlib
import json
import re
import select
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NOT_FOUND = "model '{name}' not found"
OLLAMA_VERSION = "0.12.6"


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

    def tokens(self) -> list[str]:
        # Word-ish pieces with their leading space, like real tokenizers emit (" world").
        return re.findall(r"\s*\S+|\s+", self.reply)


def _canonical(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _now() -> str:
    # RFC 3339 in UTC, as Ollama sends it ("2025-10-17T23:14:07.414671Z").
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _State:
    models: dict[str, ScriptedModel]
    token_delay: float
    chat_requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[tuple[str, str]] = field(default_factory=list)
    disconnects: int = 0
    completed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    disconnected: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)


class OllamaTestServer:
    """Ollama's HTTP API on 127.0.0.1, in a background thread; a context manager."""

    def __init__(
        self,
        models: Mapping[str, str | ScriptedModel] | None = None,
        *,
        token_delay: float = 0.0,
    ) -> None:
        scripted = {
            _canonical(name): ScriptedModel(reply=m) if isinstance(m, str) else m
            for name, m in (models or {"llama3.2:1b": ScriptedModel()}).items()
        }
        self._state = _State(models=scripted, token_delay=token_delay)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> OllamaTestServer:
        httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.state = self._state  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._state.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OllamaTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests read -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

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


class _QuietServer(ThreadingHTTPServer):
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
        if self.path == "/":
            self._send_text(200, "Ollama is running", head=True)
        else:
            self._send_text(404, "404 page not found", head=True)

    def do_GET(self) -> None:
        self._record()
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
        body = self._read_json()
        if body is None:
            return
        if self.path == "/api/chat":
            self._chat(body)
        elif self.path == "/api/show":
            self._show(body)
        else:
            self._send_text(404, "404 page not found")

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
            if not self.state.stopping.is_set():
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
        self._send_json(
            200,
            {
                "modelfile": f"FROM {_canonical(name)}\n",
                "parameters": 'stop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": self._details(model),
                "model_info": {"general.architecture": model.family},
                "capabilities": ["completion"],
                "modified_at": _now(),
            },
        )

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

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()  # compact, as Go's encoder
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

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
