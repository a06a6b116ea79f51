"""llama.cpp backend through llama-cpp-python: a GGUF file loaded in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.base import (
    BackendError,
    ChatMessage,
    Finished,
    GenerationRequest,
    StreamItem,
    TextChunk,
    Usage,
)

if TYPE_CHECKING:
    from llama_cpp import Llama

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


class LlamaCppSettings(BaseModel):
    """Load settings of a GGUF model; part of the key of the loaded-model cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_ctx: int = Field(4096, ge=64, le=1_048_576)
    n_threads: int | None = Field(None, ge=1, le=512)
    n_gpu_layers: int = Field(0, ge=-1)
    # Used only when the GGUF carries no chat template (e.g. "gemma" for base Gemma files).
    chat_format: str | None = None


class LlamaCppBackend:
    """Keeps the last loaded model per process: loading a GGUF costs seconds."""

    name = "llama_cpp"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, LlamaCppSettings] | None = None
        self._llm: Llama | None = None

    def load(self, path: str, settings: dict[str, Any]) -> Llama:
        try:
            parsed = LlamaCppSettings(**settings)
        except ValidationError as exc:
            raise BackendError(f"Invalid llama.cpp settings: {exc}") from exc
        key = (path, parsed)
        if self._key == key and self._llm is not None:
            return self._llm
        file = Path(path)
        if not file.is_file():
            raise BackendError(f"Model file not found: {path}")
        from llama_cpp import Llama  # heavy import, only where a model is really loaded

        self._llm = self._key = None  # free the previous model before loading the next
        try:
            llm = Llama(
                model_path=str(file),
                n_ctx=parsed.n_ctx,
                n_threads=parsed.n_threads,
                n_threads_batch=parsed.n_threads,
                n_gpu_layers=parsed.n_gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError(f"Could not load {file.name}: {exc}") from exc
        if CHAT_TEMPLATE_KEY not in llm.metadata:
            if not parsed.chat_format:
                raise BackendError(
                    f"{file.name} has no chat template; set a chat format (e.g. 'gemma')."
                )
            llm.chat_format = parsed.chat_format
        self._llm, self._key = llm, key
        return llm

    def stream(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> Iterator[StreamItem]:
        # ``cancel`` is honoured by the caller between chunks: llama.cpp yields a token
        # every few milliseconds once the prompt is evaluated.
        with self._lock:  # a Llama context serves one stream at a time
            llm = self.load(request.model.target, request.model.settings)
            options = request.options
            messages = fit_context(llm, request.messages, options.max_tokens)
            if llm.chat_format in SYSTEM_IN_FIRST_TURN:
                messages = fold_system_prompt(messages)
            try:
                chunks = llm.create_chat_completion(
                    messages=[{"role": m.role, "content": m.content} for m in messages],
                    stream=True,
                    temperature=options.temperature,
                    top_p=options.top_p,
                    top_k=options.top_k,
                    repeat_penalty=options.repeat_penalty,
                    max_tokens=options.max_tokens,
                    seed=options.seed,
                    stop=list(options.stop),
                )
            except (ValueError, TemplateError) as exc:  # e.g. a template refusing the turns
                raise BackendError(f"Could not build the prompt: {exc}") from exc
            text_parts: list[str] = []
            reason = "stop"
            try:
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    content = choice["delta"].get("content")
                    if content:
                        text_parts.append(content)
                        yield TextChunk(content)
                    if choice.get("finish_reason"):
                        reason = choice["finish_reason"]
            except ValueError as exc:  # llama.cpp reports context overflow this way
                raise BackendError(str(exc)) from exc
            finally:
                chunks.close()  # stops the decode loop when the caller stops early
            yield Finished(reason=reason, usage=_usage(llm, "".join(text_parts), reason))


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
    llm: Llama, messages: tuple[ChatMessage, ...], max_tokens: int
) -> tuple[ChatMessage, ...]:
    """Drop the oldest turns (never system prompts or the last message) until the prompt
    leaves room for the answer in the context window."""
    n_ctx = llm.n_ctx()
    budget = n_ctx - min(max_tokens, n_ctx // 4)
    sizes = [
        len(llm.tokenize(m.content.encode("utf-8"), add_bos=False, special=False))
        + PER_MESSAGE_OVERHEAD
        for m in messages
    ]
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


def _usage(llm: Llama, text: str, reason: str) -> Usage:
    # The streaming API reports no usage. The context now holds the prompt and every
    # generated token but the last sampled one (an end-of-generation token is not
    # counted; a "length" stop leaves the last counted token unevaluated).
    completion = len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0
    evaluated = completion - 1 if reason == "length" and completion else completion
    return Usage(prompt_tokens=max(llm.n_tokens - evaluated, 0), completion_tokens=completion)
