"""llama.cpp backend: a GGUF file loaded in this process, serving several answers at once.

The model lives in a :class:`~inference.llama_engine.BatchEngine` (continuous batching in
one llama.cpp context). Concurrent ``stream`` calls, one per answer thread of the worker,
become sequences of the same batch; the worker only sees the backend interface.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator, Hashable
from dataclasses import dataclass
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


@dataclass
class LoadedModel:
    engine: BatchEngine
    formatter: Formatter
    format_name: str | None
    # Streams handed this model that have not ended: from before their tokens reach the
    # engine (prompt fitting, tokenizing) until they end, it must not be given up.
    leases: int = 0

    @property
    def in_use(self) -> bool:
        return self.leases > 0 or self.engine.busy > 0


def available_memory() -> int | None:
    """Bytes the kernel says could be used without swapping (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


class LlamaCppBackend:
    """Keeps the models it loaded (loading a GGUF costs seconds): at most ``max_loaded``,
    and the least recently used idle one is given up first when that many are loaded or
    the machine's memory would not hold the next file."""

    name = "llama_cpp"
    continues_partial = True

    def __init__(self, max_loaded: int = 1) -> None:
        self._lock = threading.Condition()
        # Least recently used first.
        self._loaded: OrderedDict[tuple[str, LlamaCppSettings], LoadedModel] = OrderedDict()
        # Loads under way, outside the lock, and their file sizes: they count as loaded.
        self._loading: dict[tuple[str, LlamaCppSettings], int] = {}
        self.max_loaded = max(1, max_loaded)

    def batch_key(self, model: ModelSpec) -> Hashable:
        """Answers with the same key can share this process's batch (the same load)."""
        return (self.name, model.target, parse_settings(model.settings))

    def max_concurrent(self, model: ModelSpec) -> int:
        return parse_settings(model.settings).batch_size

    def loaded(self) -> list[str]:
        return [path for path, _ in list(self._loaded)]

    def _make_room(self, needed_bytes: int) -> bool:
        """Give up idle models, least recently used first, until one more fits; False while
        the models still answering (or being loaded) leave no room."""
        # Loads under way have not taken their memory yet: count it as taken.
        needed_bytes += sum(self._loading.values())
        for key, loaded in list(self._loaded.items()):
            memory = available_memory()
            if self._count() < self.max_loaded and (memory is None or memory > needed_bytes):
                return True
            if not loaded.in_use:
                loaded.engine.close()
                del self._loaded[key]
        # Short of memory with nothing idle left to give up: try (the file is mapped).
        return self._count() < self.max_loaded

    def _count(self) -> int:
        return len(self._loaded) + len(self._loading)

    def load(
        self,
        path: str,
        settings: dict[str, Any],
        cancel: threading.Event | None = None,
        lease: bool = False,
    ) -> LoadedModel:
        """This file with these settings, loaded if needed. When the process is full of
        models that are all answering, it waits for one of them to finish. ``lease``: the
        caller will use it and must call :meth:`release` when done.

        Loading takes seconds and happens outside the lock: answers of models already
        loaded start and end meanwhile, and a second caller of the same load waits for it."""
        parsed = parse_settings(settings)
        key = (path, parsed)
        file = Path(path)
        with self._lock:
            while True:
                if key in self._loaded:
                    self._loaded.move_to_end(key)
                    loaded = self._loaded[key]
                    loaded.leases += int(lease)
                    return loaded
                if key not in self._loading:
                    if not file.is_file():
                        raise BackendError(f"Model file not found: {file.name}", detail=path)
                    size = file.stat().st_size
                    if self._make_room(size):
                        break
                if cancel is not None and cancel.is_set():
                    raise BackendError("Stopped while waiting for another model to finish.")
                self._lock.wait(0.1)
            self._loading[key] = size
        model: LoadedModel | None = None
        try:
            model = self._open_with_format(file, parsed)
        finally:
            with self._lock:
                # In one step: a caller waiting for this load finds it loaded or not begun.
                del self._loading[key]
                if model is not None:
                    model.leases = int(lease)
                    self._loaded[key] = model
                self._lock.notify_all()
        return model

    def _open_with_format(self, file: Path, parsed: LlamaCppSettings) -> LoadedModel:
        config = EngineConfig(
            n_ctx_per_seq=parsed.n_ctx,
            n_seq_max=parsed.batch_size,
            n_threads=parsed.n_threads,
            n_gpu_layers=parsed.n_gpu_layers,
            prefill_chunk=parsed.prefill_chunk,
        )
        try:
            engine = self._open(file, config)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError(f"Could not load {file.name}.", detail=f"{file}: {exc}") from exc
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
            formatter = chat_formatter(
                engine.metadata,
                format_name,
                bos=engine.token_text(model.token_bos()) if model.token_bos() != -1 else "",
                eos=engine.token_text(model.token_eos()) if model.token_eos() != -1 else "",
                eos_id=model.token_eos(),
            )
        except BackendError:
            engine.close()
            raise
        return LoadedModel(engine, formatter, format_name)

    def _open(self, file: Path, config: EngineConfig) -> BatchEngine:
        """Load the file; if that fails while other models are loaded (GPU memory, which
        the memory check cannot see), give up the idle ones and try once more."""
        try:
            return BatchEngine(str(file), config)
        except (ValueError, RuntimeError, OSError):
            with self._lock:
                idle = [key for key, loaded in self._loaded.items() if not loaded.in_use]
                engines = [self._loaded.pop(key).engine for key in idle]
            if not engines:
                raise
            for engine in engines:
                engine.close()
            return BatchEngine(str(file), config)

    def release(self, loaded: LoadedModel) -> None:
        with self._lock:
            loaded.leases -= 1
            self._lock.notify_all()

    def stream(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> Generator[StreamItem, None, None]:
        loaded = self.load(request.model.target, request.model.settings, cancel, lease=True)
        try:
            yield from self._generate(loaded, request, cancel)
        finally:
            self.release(loaded)

    def _generate(
        self,
        loaded: LoadedModel,
        request: GenerationRequest,
        cancel: threading.Event | None,
    ) -> Generator[StreamItem, None, None]:
        engine, formatter, format_name = loaded.engine, loaded.formatter, loaded.format_name
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
