"""Text in and out of a llama.cpp sequence, the way llama-cpp-python's chat API does it.

The batched engine drives llama.cpp through the low-level API, so the prompt a chat format
builds and the text a token stream spells must match what ``Llama.create_chat_completion``
would give: the same prompt tokens, the same stop strings, the same text.
"""

from __future__ import annotations

import codecs
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from inference.base import BackendError, ChatMessage

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


@dataclass(frozen=True)
class Prompt:
    """What a chat format makes of a conversation: the text to tokenize and how to end."""

    text: str
    add_bos: bool
    stop: tuple[str, ...]


Formatter = Callable[..., Any]


def chat_formatter(
    metadata: dict[str, str], chat_format: str | None, bos: str, eos: str, eos_id: int
) -> Formatter:
    """The formatter llama-cpp-python would pick for this GGUF: its template (by name when
    llama-cpp-python knows it), else the configured ``chat_format``."""
    from llama_cpp import llama_chat_format

    template = metadata.get(CHAT_TEMPLATE_KEY)
    if template is None:
        if not chat_format:
            raise BackendError("This model has no chat template; set a chat format (e.g. 'gemma').")
        return _named_formatter(chat_format)
    guessed = llama_chat_format.guess_chat_format_from_gguf_metadata(metadata)
    if guessed:
        return _named_formatter(guessed)
    return llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]
    )


def _named_formatter(name: str) -> Formatter:
    from llama_cpp import llama_chat_format

    registry = llama_chat_format.LlamaChatCompletionHandlerRegistry()
    try:
        handler = registry.get_chat_completion_handler_by_name(name)
    except llama_chat_format.LlamaChatCompletionHandlerNotFoundException:
        raise BackendError(f"Unknown chat format {name!r}.") from None
    # Formats registered with @register_chat_format wrap a plain formatter function.
    formatter = inspect.getclosurevars(handler).nonlocals.get("chat_formatter")
    if formatter is None:
        raise BackendError(f"The chat format {name!r} needs its own handler; it is not supported.")
    return formatter  # type: ignore[no-any-return]


def format_prompt(formatter: Formatter, messages: Sequence[ChatMessage]) -> Prompt:
    try:
        result = formatter(messages=[{"role": m.role, "content": m.content} for m in messages])
    except (ValueError, TemplateError) as exc:  # e.g. a template refusing the turns
        raise BackendError(f"Could not build the prompt: {exc}") from exc
    stop = result.stop or []
    return Prompt(
        text=result.prompt,
        add_bos=not result.added_special,
        stop=tuple([stop] if isinstance(stop, str) else stop),
    )


class TextDecoder:
    """Token pieces (bytes) in, text out: whole UTF-8 characters only, and nothing that
    may turn out to be the start of a stop string. ``stopped`` is set once a stop string
    appeared; the text before it is what the answer says."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._bytes = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._stop = tuple(s for s in stop if s)
        self._pending = ""
        self.stopped = False

    def feed(self, piece: bytes, final: bool = False) -> str:
        """Add one token's bytes; return the text that is now certain."""
        if self.stopped:
            return ""
        self._pending += self._bytes.decode(piece, final=final)
        cut = min((i for s in self._stop if (i := self._pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self._pending, self.stopped = self._pending[:cut], "", True
            return out
        hold = 0 if final else self._held_back()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out

    def finish(self) -> str:
        return self.feed(b"", final=True)

    def _held_back(self) -> int:
        # The longest end of the pending text that begins some stop string.
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest
