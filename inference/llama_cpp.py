"""llama.cpp backend: a GGUF file loaded in this process, serving several answers at once.

The model lives in a :class:`~inference.llama_engine.BatchEngine` (continuous batching in
one llama.cpp context). Concurrent ``stream`` calls, one per answer thread of the worker,
become sequences of the same batch; the worker only sees the backend interface.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Hashable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.base import BackendError, ChatMessage, GenerationRequest, ModelSpec, StreamItem
from inference.llama_engine import BatchEngine, EngineConfig
from inference.llama_text import (
    CHAT_TEMPLATE_KEY,
    Formatter,
    chat_formatter,
    format_prompt,
)


class LlamaCppSettings(BaseModel):
    """Load settings of a GGUF model; part of the key of the loaded-model cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Context per answer: the batch's context holds ``n_ctx`` cells for each sequence.
    n_ctx: int = Field(4096, ge=64, le=1_048_576)
    n_threads: int | None = Field(None, ge=1, le=512)
    n_gpu_layers: int = Field(0, ge=-1)
    # Used only when the GGUF carries no chat template (e.g. "gemma" for base Gemma files).
    chat_format: str | None = None
    # Answers generated at once in one context (continuous batching).
    batch_size: int = Field(8, ge=1, le=256)
    # Prompt tokens a joining answer adds per step while others stream.
    prefill_chunk: int = Field(128, ge=16, le=4096)


def parse_settings(settings: dict[str, Any]) -> LlamaCppSettings:
    try:
        return LlamaCppSettings(**settings)
    except ValidationError as exc:
        raise BackendError(f"Invalid llama.cpp settings: {exc}") from exc


class LlamaCppBackend:
    """Keeps the last loaded model per process: loading a GGUF costs seconds."""

    name = "llama_cpp"
    continues_partial = True

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._key: tuple[str, LlamaCppSettings] | None = None
        self._engine: BatchEngine | None = None
        self._formatter: Formatter | None = None
        self._format_name: str | None = None

    def batch_key(self, model: ModelSpec) -> Hashable:
        """Answers with the same key can share this process's batch (the same load)."""
        return (self.name, model.target, parse_settings(model.settings))

    def max_concurrent(self, model: ModelSpec) -> int:
        return parse_settings(model.settings).batch_size

    def loaded(self) -> list[str]:
        key = self._key
        return [key[0]] if key is not None else []

    def load(
        self, path: str, settings: dict[str, Any], cancel: threading.Event | None = None
    ) -> BatchEngine:
        """The engine for this file and settings, loading it if needed. Another model's
        answers still running in this process finish first: one model is loaded at once."""
        parsed = parse_settings(settings)
        key = (path, parsed)
        with self._lock:
            while self._engine is not None and self._key != key and self._engine.busy:
                if cancel is not None and cancel.is_set():
                    raise BackendError("Stopped while waiting for another model to finish.")
                self._lock.wait(0.1)
            if self._key == key and self._engine is not None:
                return self._engine
            file = Path(path)
            if not file.is_file():
                raise BackendError(f"Model file not found: {file.name}", detail=path)
            if self._engine is not None:  # free the previous model before loading the next
                self._engine.close()
                self._engine = self._key = None
            config = EngineConfig(
                n_ctx_per_seq=parsed.n_ctx,
                n_seq_max=parsed.batch_size,
                n_threads=parsed.n_threads,
                n_gpu_layers=parsed.n_gpu_layers,
                prefill_chunk=parsed.prefill_chunk,
            )
            try:
                engine = BatchEngine(str(file), config)
            except (ValueError, RuntimeError, OSError) as exc:
                raise BackendError(f"Could not load {file.name}.", detail=f"{path}: {exc}") from exc
            format_name = None
            if CHAT_TEMPLATE_KEY not in engine.metadata:
                if not parsed.chat_format:
                    engine.close()
                    raise BackendError(
                        f"{file.name} has no chat template; set a chat format (e.g. 'gemma')."
                    )
                format_name = parsed.chat_format
            model = engine.model
            try:
                self._formatter = chat_formatter(
                    engine.metadata,
                    format_name,
                    bos=engine.token_text(model.token_bos()) if model.token_bos() != -1 else "",
                    eos=engine.token_text(model.token_eos()) if model.token_eos() != -1 else "",
                    eos_id=model.token_eos(),
                )
            except BackendError:
                engine.close()
                raise
            self._engine, self._key, self._format_name = engine, key, format_name
            return engine

    def stream(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> Generator[StreamItem, None, None]:
        engine = self.load(request.model.target, request.model.settings, cancel)
        formatter, format_name = self._formatter, self._format_name
        assert formatter is not None
        options = request.options
        # A continued answer: its written part goes after the model's turn marker, as if
        # this context had generated it, and counts against its token limit.
        written = len(engine.tokenize(request.continue_from)) if request.continue_from else 0
        if written:
            options = options.model_copy(
                update={"max_tokens": max(1, options.max_tokens - written)}
            )
        messages = fit_context(engine, request.messages, options.max_tokens + written)
        if format_name in SYSTEM_IN_FIRST_TURN:
            messages = fold_system_prompt(messages)
        prompt = format_prompt(formatter, messages)
        tokens = engine.tokenize(
            prompt.text + request.continue_from, add_bos=prompt.add_bos, special=True
        )
        yield from engine.generate(
            tokens, options, (*options.stop, *prompt.stop), cancel, background=request.background
        )


# llama-cpp-python's formats for these drop system messages silently; Gemma's own
# template puts the system text at the start of the first user turn instead.
SYSTEM_IN_FIRST_TURN = frozenset({"gemma"})


def fold_system_prompt(messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
    """System messages joined into the start of the first user turn (as Gemma 3 does)."""
    system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
    turns = [m for m in messages if m.role != "system"]
    if not system:
        return tuple(turns)
    first_user = next((i for i, m in enumerate(turns) if m.role == "user"), None)
    if first_user is None:
        return (ChatMessage(role="user", content=system), *turns)
    turns[first_user] = ChatMessage(role="user", content=f"{system}\n\n{turns[first_user].content}")
    return tuple(turns)


# Template tokens around each message (role markers, separators), generously counted.
PER_MESSAGE_OVERHEAD = 8


def fit_context(
    engine: BatchEngine, messages: tuple[ChatMessage, ...], max_tokens: int
) -> tuple[ChatMessage, ...]:
    """Drop the oldest turns (never system prompts or the last message) until the prompt
    leaves room for the answer in the context window."""
    n_ctx = engine.n_ctx_per_seq
    budget = n_ctx - min(max_tokens, n_ctx // 4)
    sizes = [len(engine.tokenize(m.content)) + PER_MESSAGE_OVERHEAD for m in messages]
    keep = list(range(len(messages)))
    droppable = [i for i in keep[:-1] if messages[i].role != "system"]
    total = sum(sizes)
    while droppable and (
        total > budget
        # Templates that insist on alternating turns must not start with an answer.
        or (keep != list(range(len(messages))) and messages[droppable[0]].role == "assistant")
    ):
        oldest = droppable.pop(0)
        keep.remove(oldest)
        total -= sizes[oldest]
    if total > budget:
        raise BackendError(
            f"The conversation needs about {total} tokens, more than this model's context of "
            f"{n_ctx} tokens leaves for the prompt ({budget}). Shorten the message."
        )
    return tuple(messages[i] for i in keep)
