"""Managing the models on an Ollama server: health, pull, show, copy, delete.

Plain functions for the admin pages and their tasks (nothing here knows Django). Each call
opens its own connection and closes it before returning. Every failure is a
:class:`~inference.base.BackendError` whose message an admin can act on; ``detail`` names the
server. Redirects are refused, never followed: a server address must not be able to send these
requests somewhere else (another host, or a service behind the web server's own firewall).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import ollama

from inference.base import BackendError
from inference.ollama import _TRANSPORT_ERRORS, CONNECT_TIMEOUT_S, _transport_error

# How long a silent server may keep us waiting once connected. A health check and the small
# requests are answered at once by a working server; a pull can be silent while Ollama checks
# the digest of a large download (tens of GB read back from disk).
CHECK_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
PULL_READ_TIMEOUT_S = 900.0

REDIRECT_MESSAGE = (
    "Ollama error: the server answered with a redirect. Enter the address of the Ollama "
    "server itself; redirects are not followed."
)
ADDRESS_MESSAGE = (
    "The Ollama server's address must be an http:// or https:// URL, like http://127.0.0.1:11434."
)
# Error bodies are quoted to admins; a web page from a proxy in front of Ollama is not.
_LONGEST_QUOTE = 300

# Ollama's model names (types/model/name.go): [host/][namespace/]model[:tag]. Each part starts
# with a letter, digit or underscore and goes on with those and "-"; "." is allowed except in
# a namespace; at most 80 characters a part (a host: its name and an optional port). Stricter
# than Ollama: no "..", no scheme, no digest (@sha256-...), nothing else.
_HOST = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,339}(?::[0-9]{1,5})?"
_NAMESPACE = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
MODEL_NAME_PATTERN = re.compile(
    rf"\A(?!.*\.\.)(?:(?:(?P<host>{_HOST})/)?(?P<namespace>{_NAMESPACE})/)?"
    rf"(?P<model>{_PART})(?::(?P<tag>{_PART}))?\Z"
)


class InvalidModelName(BackendError):
    """A name :data:`MODEL_NAME_PATTERN` refuses; nothing was sent to the server."""


class Cancelled(Exception):
    """The pull stopped because ``should_stop()`` said so; the connection has been closed."""


@dataclass(frozen=True)
class RemoteModel:
    """One model installed on the server, as /api/tags lists it."""

    name: str
    size: int | None
    digest: str | None
    family: str | None
    parameter_size: str | None
    quantization_level: str | None
    modified_at: datetime | None


@dataclass(frozen=True)
class ServerHealth:
    """``ok`` when the server answered as Ollama does; otherwise ``error`` says why, for the
    admin, and ``detail`` holds the address and the transport's own words."""

    ok: bool
    version: str | None = None
    models: list[RemoteModel] = field(default_factory=list)
    error: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class PullProgress:
    """One line of a pull's progress.

    ``status``, ``digest``, ``completed`` and ``total`` are as Ollama sent them: the bytes are
    those of the one layer (blob) being downloaded, None on lines about no layer ("pulling
    manifest", "verifying sha256 digest", "writing manifest", "success"). ``fraction`` is the
    whole pull's progress, 0.0 to 1.0, over the layers announced so far; Ollama announces them
    one at a time (weights first), so it never goes back and may run ahead when a late layer
    is large. None until the first layer; 1.0 at "success".
    """

    status: str
    digest: str | None
    completed: int | None
    total: int | None
    fraction: float | None


@dataclass(frozen=True)
class ModelDetails:
    """What /api/show says about one installed model (None: the server did not say)."""

    name: str
    architecture: str | None
    parameter_count: int | None
    context_length: int | None
    quantization: str | None
    family: str | None
    parameter_size: str | None
    has_template: bool
    parameters: str
    capabilities: list[str]
    modified_at: datetime | None


def validate_model_name(name: str) -> str:
    """``name`` unchanged if it is a model name an admin may pull, else InvalidModelName."""
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.match(name):
        shown = repr(name) if len(repr(name)) <= 100 else repr(name)[:97] + "..."
        raise InvalidModelName(
            f"{shown} is not an Ollama model name: write [host/][namespace/]name[:tag] "
            "with letters, digits, '.', '-' and '_', at most 80 characters a part."
        )
    return name


def check_server(base_url: str) -> ServerHealth:
    """Whether ``base_url`` is a working Ollama server: its version and installed models.

    Never raises for the server's faults: they are the answer (``ok`` False, ``error``).
    """
    try:
        url = _server_url(base_url)
        version = _version(url)
        with closing(_client(url, CHECK_TIMEOUT_S)) as client:
            try:
                listing = client.list()
            except (ollama.ResponseError, *_TRANSPORT_ERRORS) as exc:
                raise _failure(exc, "list its models", url, CHECK_TIMEOUT_S) from exc
    except BackendError as exc:
        return ServerHealth(ok=False, error=str(exc), detail=exc.detail)
    models = []
    for item in listing.models:
        details = item.details
        models.append(
            RemoteModel(
                name=item.model or "",
                size=int(item.size) if item.size is not None else None,
                digest=item.digest,
                family=details.family if details else None,
                parameter_size=details.parameter_size if details else None,
                quantization_level=details.quantization_level if details else None,
                modified_at=item.modified_at,
            )
        )
    return ServerHealth(ok=True, version=version, models=models)


def pull(
    base_url: str,
    name: str,
    *,
    on_progress: Callable[[PullProgress], None],
    should_stop: Callable[[], bool],
) -> None:
    """Have the server download model ``name``, reporting each progress line Ollama sends.

    ``should_stop`` is asked before the request and after every line (several a second while
    a layer downloads; none while Ollama verifies what it downloaded). When it answers True the
    connection is closed, which makes Ollama give up the pull, and :class:`Cancelled` is
    raised. Returns once Ollama says "success"; raises BackendError with Ollama's own words
    when it refuses or fails (an unknown name: "pull model manifest: file does not exist").
    """
    validate_model_name(name)
    url = _server_url(base_url)
    if should_stop():
        raise Cancelled(f"pull of {name!r} cancelled before it started")
    tally = _PullTally()
    with closing(_client(url, PULL_READ_TIMEOUT_S)) as client:
        try:
            # stream=True returns a generator (the stubs say Iterator): closing it closes the
            # HTTP response and so the connection, which is how Ollama learns we gave up.
            lines = cast(
                Generator[ollama.ProgressResponse, None, None], client.pull(name, stream=True)
            )
            try:
                for line in lines:
                    if should_stop():
                        raise Cancelled(f"pull of {name!r} cancelled")
                    progress = tally.add(line)
                    on_progress(progress)
                    if progress.status == "success":
                        return
            finally:
                lines.close()
        except (ollama.ResponseError, *_TRANSPORT_ERRORS) as exc:
            raise _failure(exc, f"pull {name!r}", url, PULL_READ_TIMEOUT_S) from exc
    raise BackendError(
        f"Ollama error: the pull of {name!r} ended before the server said it succeeded.",
        detail=url,
    )


def show(base_url: str, name: str) -> ModelDetails:
    """Architecture, size, context, quantization and template of installed model ``name``."""
    validate_model_name(name)
    url = _server_url(base_url)
    with closing(_client(url, REQUEST_TIMEOUT_S)) as client:
        try:
            info = client.show(name)
        except (ollama.ResponseError, *_TRANSPORT_ERRORS) as exc:
            raise _failure(exc, f"show {name!r}", url, REQUEST_TIMEOUT_S) from exc
    details = info.details
    model_info: dict[str, Any] = dict(info.modelinfo or {})
    family = details.family if details else None
    architecture = _text(model_info.get("general.architecture")) or family
    return ModelDetails(
        name=name,
        architecture=architecture,
        parameter_count=_count(model_info.get("general.parameter_count")),
        context_length=(
            _count(model_info.get(f"{architecture}.context_length")) if architecture else None
        ),
        quantization=details.quantization_level if details else None,
        family=family,
        parameter_size=details.parameter_size if details else None,
        has_template=bool((info.template or "").strip()),
        parameters=info.parameters or "",
        capabilities=list(info.capabilities or []),
        modified_at=info.modified_at,
    )


def copy(base_url: str, source: str, destination: str) -> None:
    """Install ``source`` again under the name ``destination`` (Ollama shares the blobs)."""
    validate_model_name(source)
    validate_model_name(destination)
    url = _server_url(base_url)
    with closing(_client(url, REQUEST_TIMEOUT_S)) as client:
        try:
            client.copy(source, destination)
        except (ollama.ResponseError, *_TRANSPORT_ERRORS) as exc:
            action = f"copy {source!r} to {destination!r}"
            raise _failure(exc, action, url, REQUEST_TIMEOUT_S) from exc


def delete(base_url: str, name: str) -> None:
    """Remove model ``name`` from the server (blobs no other model uses go with it)."""
    validate_model_name(name)
    url = _server_url(base_url)
    with closing(_client(url, REQUEST_TIMEOUT_S)) as client:
        try:
            client.delete(name)
        except (ollama.ResponseError, *_TRANSPORT_ERRORS) as exc:
            raise _failure(exc, f"delete {name!r}", url, REQUEST_TIMEOUT_S) from exc


# -- helpers -----------------------------------------------------------------------------------


class _PullTally:
    """Bytes done and due per layer seen, for the pull's overall fraction."""

    def __init__(self) -> None:
        self._layers: dict[str, tuple[int, int]] = {}
        self._fraction: float | None = None

    def add(self, line: ollama.ProgressResponse) -> PullProgress:
        status = line.status or ""
        if line.digest and line.total:
            self._layers[line.digest] = (min(line.completed or 0, line.total), line.total)
            done = sum(completed for completed, _ in self._layers.values())
            due = sum(total for _, total in self._layers.values())
            self._fraction = max(self._fraction or 0.0, done / due)
        if status == "success":
            self._fraction = 1.0
        return PullProgress(
            status=status,
            digest=line.digest,
            completed=line.completed,
            total=line.total,
            fraction=self._fraction,
        )


def _server_url(base_url: str) -> str:
    """``base_url`` without a trailing slash, if it is an http(s) URL naming a host."""
    try:
        parts = urlsplit(base_url.strip())
        _ = parts.port  # raises ValueError for a port that is not a number
    except (AttributeError, ValueError) as exc:
        raise BackendError(ADDRESS_MESSAGE, detail=repr(base_url)) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise BackendError(ADDRESS_MESSAGE, detail=repr(base_url))
    return parts.geturl().rstrip("/")


def _client(url: str, read_timeout: float) -> ollama.Client:
    return ollama.Client(
        host=url,
        timeout=httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT_S),
        follow_redirects=False,
    )


def _version(url: str) -> str:
    # The Python client has no call for /api/version; ask it with the same rules.
    timeout = httpx.Timeout(CHECK_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    try:
        with httpx.Client(base_url=url, timeout=timeout, follow_redirects=False) as http:
            response = http.get("/api/version")
            if response.is_redirect or 300 <= response.status_code < 400:
                raise BackendError(REDIRECT_MESSAGE, detail=f"{url}: {response.status_code}")
            if response.status_code != 200:
                raise BackendError(
                    f"Ollama error: the server answered /api/version with HTTP "
                    f"{response.status_code}; is this an Ollama server?",
                    detail=f"{url}: {_quote(response.text)}",
                )
            version = response.json().get("version")
    except (*_TRANSPORT_ERRORS, AttributeError) as exc:
        raise _failure(exc, "tell its version", url, CHECK_TIMEOUT_S) from exc
    if not isinstance(version, str) or not version:
        raise BackendError(
            "Ollama error: the server sent a response that is not Ollama's API.", detail=url
        )
    return version


def _failure(exc: BaseException, action: str, url: str, read_timeout: float) -> BackendError:
    if isinstance(exc, ollama.ResponseError):
        if 300 <= exc.status_code < 400:
            return BackendError(REDIRECT_MESSAGE, detail=f"{url}: {exc.status_code}")
        where = f"{url}: HTTP {exc.status_code}" if exc.status_code > 0 else url
        return BackendError(f"Ollama could not {action}: {_quote(str(exc.error))}", detail=where)
    if isinstance(exc, AttributeError | json.JSONDecodeError):
        return BackendError(
            "Ollama error: the server sent a response that is not Ollama's API.", detail=url
        )
    return _transport_error(exc, url, read_timeout)


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _LONGEST_QUOTE else text[: _LONGEST_QUOTE - 3] + "..."


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: object) -> int | None:
    # GGUF counts arrive as JSON numbers; anything else means the server did not say.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
