"""llama.cpp backend through llama-cpp-python: a GGUF file loaded in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.base import BackendError, Finished, GenerationRequest, StreamItem, TextChunk, Usage

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

    def stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        with self._lock:  # a Llama context serves one stream at a time
            llm = self.load(request.model.target, request.model.settings)
            options = request.options
            try:
                chunks = llm.create_chat_completion(
                    messages=[{"role": m.role, "content": m.content} for m in request.messages],
                    stream=True,
                    temperature=options.temperature,
                    top_p=options.top_p,
                    top_k=options.top_k,
                    repeat_penalty=options.repeat_penalty,
                    max_tokens=options.max_tokens,
                    seed=options.seed,
                    stop=list(options.stop),
                )
            except ValueError as exc:  # e.g. the prompt does not fit the context
                raise BackendError(str(exc)) from exc
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


def _usage(llm: Llama, text: str, reason: str) -> Usage:
    # The streaming API reports no usage. The context now holds the prompt and every
    # generated token but the last sampled one (an end-of-generation token is not
    # counted; a "length" stop leaves the last counted token unevaluated).
    completion = len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0
    evaluated = completion - 1 if reason == "length" and completion else completion
    return Usage(prompt_tokens=max(llm.n_tokens - evaluated, 0), completion_tokens=completion)
