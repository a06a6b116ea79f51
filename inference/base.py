"""The one interface every inference backend implements."""

from __future__ import annotations

import threading
from collections.abc import Generator, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


class SamplingOptions(BaseModel):
    """Sampling parameters shared by every backend; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0, le=1000)
    repeat_penalty: float = Field(1.1, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1, le=32768)
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """Where a model lives and how to load it.

    ``target`` is a GGUF path for llama.cpp or a model name for Ollama. ``settings`` holds
    backend-specific load settings, validated by the backend itself.
    """

    backend: str
    target: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationRequest:
    model: ModelSpec
    messages: tuple[ChatMessage, ...]
    options: SamplingOptions = field(default_factory=SamplingOptions)
    # The start of the answer, already written by a lost worker: a backend that
    # ``continues_partial`` generates what follows it (the chunks exclude it).
    continue_from: str = ""
    # Low-priority work (titles): a backend may give it smaller slices of the machine so
    # that an answer arriving meanwhile is not held up behind it.
    background: bool = False


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Finished:
    """Last item of every stream. ``reason`` is "stop" (natural end) or "length"."""

    reason: str
    usage: Usage


StreamItem = TextChunk | Finished


class BackendError(Exception):
    """A failure the user should read: the message is shown in the answer as it is.
    ``detail`` holds what only the worker's log and admins see: hosts, paths, driver
    messages."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class Backend(Protocol):
    name: str
    # Whether ``stream`` honours ``GenerationRequest.continue_from``; other backends'
    # answers are written anew after a worker loss.
    continues_partial: bool

    def batch_key(self, model: ModelSpec) -> Hashable:
        """Answers whose models have equal keys may run at the same time in one process
        (one loaded llama.cpp model; one Ollama server)."""
        ...

    def max_concurrent(self, model: ModelSpec) -> int:
        """How many answers for ``model`` one process runs at once; ``stream`` is then
        called from that many threads."""
        ...

    def loaded(self) -> list[str]:
        """The models this process holds loaded (their targets): the fleet page shows
        them, and answers can be sent where their model is warm."""
        ...

    def stream(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> Generator[StreamItem, None, None]:
        """Yield text chunks, then one Finished.

        Must be a generator: closing it early (``.close()``) must stop generation and
        release the upstream connection. ``cancel``, set from another thread, asks a
        backend that may wait long without yielding (a remote server loading a model) to
        give up at once; the stream then ends without Finished. Raises
        :class:`BackendError` for failures.
        """
        ...
