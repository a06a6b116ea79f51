"""Running one answer: the body of the worker's job, kept out of the Celery task.

The worker does not know which backend it runs: it turns the answer's conversation into a
GenerationRequest and consumes ``backend.stream(request)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from django.db import close_old_connections
from django.db.models.functions import Now
from pydantic import ValidationError

from inference import (
    BackendError,
    ChatMessage,
    Finished,
    GenerationRequest,
    ModelSpec,
    Role,
    SamplingOptions,
    get_backend,
)
from webui import config
from webui.chat import queue, selectors, stop_flags, streams, wakeups
from webui.chat.endings import STOPPED_BY_USER, end_answer
from webui.chat.models import LanguageModel, Message, storable_text
from webui.library import ollama_routing, ollama_servers
from workers.claims import claim_next, still_ours, wake_follow_ups
from workers.handoff import hand_off
from workers.heartbeat import Heartbeat
from workers.outages import DATABASE_DOWN, until_database_returns

logger = logging.getLogger("corral.generation")


TITLES_PER_WAKE = 10
INTERNAL_ERROR = "Internal error: the worker could not finish this answer (details in its log)."


class LostOwnership(Exception):
    """The answer was re-queued or failed by a reaper while this worker ran it."""


def model_spec(model: LanguageModel, answer: Message | None = None) -> ModelSpec:
    """The model's load settings, with this machine's defaults for what it leaves out.
    An Ollama model that names no host goes to the least busy of the servers admins added
    that has it (``answer``: chosen once for that answer and kept); with no server added,
    to the client's own default (OLLAMA_HOST)."""
    defaults: dict[str, object] = {}
    if model.backend == "llama_cpp":
        defaults = {
            "n_ctx": config.DEFAULT_N_CTX,
            "n_threads": config.N_THREADS,
            "n_gpu_layers": config.DEFAULT_N_GPU_LAYERS,
            "batch_size": config.BATCH_SIZE,
        }
    elif model.backend == "ollama":
        defaults = {"parallel": config.OLLAMA_PARALLEL}
        if model.settings.get("host"):
            # Checked when it was saved, and again here: the name may resolve elsewhere
            # by now (a metadata address), and nothing else looks at it.
            try:
                ollama_servers.check_address(str(model.settings["host"]))
            except ollama_servers.ServerError as exc:
                raise BackendError(f"This model's Ollama address is refused: {exc}") from None
        if not model.settings.get("host") and ollama_routing.servers_added():
            defaults["host"] = (
                ollama_routing.route(answer, model.target)
                if answer is not None
                else ollama_routing.least_busy(model.target)
            )
    return ModelSpec(
        backend=model.backend, target=model.target, settings={**defaults, **model.settings}
    )


def build_request(answer: Message) -> GenerationRequest:
    """Everything before ``answer`` in its conversation, as the model should see it."""
    assert answer.model is not None
    messages = list(answer.conversation.messages.all())
    parent = next((m for m in messages if m.pk == answer.parent_id), None)
    history = tuple(
        ChatMessage(role=cast(Role, message.role), content=message.content)
        for message in selectors.branch_to(parent, messages)
        if message.content  # a failed answer with no text says nothing to the model
    )
    conversation = answer.conversation
    # The conversation's own system prompt, else its model's default.
    system_prompt = conversation.system_prompt or answer.model.system_prompt
    if system_prompt:
        history = (ChatMessage(role="system", content=system_prompt), *history)
    try:
        # The conversation's own settings (conversation_settings) over the model's defaults.
        options = SamplingOptions(**{**answer.model.parameters, **conversation.parameters})
    except ValidationError as exc:
        raise BackendError(f"The sampling parameters are invalid: {exc}") from exc
    if options.max_tokens > config.MAX_TOKENS_PER_ANSWER:
        options = options.model_copy(update={"max_tokens": config.MAX_TOKENS_PER_ANSWER})
    return GenerationRequest(
        model=model_spec(answer.model, answer),
        messages=history,
        options=options,
        # Text kept by the reaper from a lost attempt (only for backends that continue).
        continue_from=answer.content,
    )


class LiveStreams:
    """How many answers this process streams now: they share ``config.DELTAS_PER_S``.
    Also counts the chunks (about a token each) they streamed, for the fleet's tokens/s."""

    def __init__(self) -> None:
        self._count = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def __enter__(self) -> LiveStreams:
        with self._lock:
            self._count += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._count -= 1

    @property
    def count(self) -> int:
        return self._count

    def streamed(self) -> None:
        self.tokens += 1  # unlocked: a rare lost increment only nudges a displayed rate

    def flush_interval(self) -> float:
        """How long each stream collects text before sending it as one delta (an answer
        alone: ``config.FLUSH_INTERVAL_S``)."""
        if self._count <= 1:
            return config.FLUSH_INTERVAL_S
        return max(config.FLUSH_INTERVAL_S, self._count / config.DELTAS_PER_S)


LIVE_STREAMS = LiveStreams()


@dataclass
class AnswerStream:
    """Accumulates text and decides when to publish a delta and when to checkpoint."""

    answer: Message
    text: str = ""
    chunks: int = 0
    seq: int = 0
    flushed_chars: int = 0
    # Monotonic seconds on this worker: time to first token counts from the start of
    # generation (queue wait is started_at - created_at), whatever the clocks say.
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    _last_flush: float = 0.0
    _last_checkpoint: float = field(default_factory=time.monotonic)
    checkpoint_failing: bool = False
    # What the prompt is counted as when no usage record comes (stopped or failed).
    prompt_estimate: int = 0
    # Writes checkpoints off this thread (the heartbeat's); None: written here.
    saver: Callable[[str, int], None] | None = None

    def add(self, chunk: str) -> bool:
        """Append a chunk; return True when the caller should flush now."""
        if self.first_token is None:
            self.first_token = time.monotonic()
        # Made storable here, so what streams is what is saved.
        self.text += storable_text(chunk)
        self.chunks += 1
        LIVE_STREAMS.streamed()
        # The first token goes out at once (time to first token); later ones are batched.
        due = time.monotonic() - self._last_flush >= LIVE_STREAMS.flush_interval()
        return self.chunks == 1 or due

    def flush(self) -> None:
        if self.flushed_chars == len(self.text):
            return
        self.seq += 1
        streams.publish_delta(
            streams.Delta(
                conversation_id=self.answer.conversation_id,
                message_id=self.answer.pk,
                attempt=self.answer.attempts,
                seq=self.seq,
                offset=self.flushed_chars,
                text=self.text[self.flushed_chars :],
            )
        )
        self.flushed_chars = len(self.text)
        self._last_flush = time.monotonic()
        if self._last_flush - self._last_checkpoint >= config.CHECKPOINT_INTERVAL_S:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Save the text delivered so far. While the database is down the answer goes on
        (its deltas travel through Redis) and the next flush tries again."""
        self._last_checkpoint = time.monotonic()
        if self.saver is not None:
            self.saver(self.text[: self.flushed_chars], self.seq)
            return
        try:
            # Text and seq move together: a reconnecting client adds the deltas after seq.
            saved = Message.objects.filter(still_ours(self.answer)).update(
                content=self.text[: self.flushed_chars], seq=self.seq, heartbeat_at=Now()
            )
        except DATABASE_DOWN:
            if not self.checkpoint_failing:
                logger.warning(
                    "answer %s: checkpoint failed, generating on", self.answer.pk, exc_info=True
                )
            self.checkpoint_failing = True
            close_old_connections()
            return
        self.checkpoint_failing = False
        if not saved:
            raise LostOwnership


def run_next(pool: str, worker: str) -> Message | None:
    """Claim the fairest queued answer of ``pool`` and generate it in this thread; None if
    none waits. (Workers run several at once: ``workers.serving``.)"""
    from workers import titles  # titles build on this module

    answer = claim_next(pool, worker)
    if answer is None:
        # Nothing waits: write titles, the low-priority work, until an answer arrives.
        for _ in range(TITLES_PER_WAKE):
            if titles.run_next_title(pool) is None:
                break
        return None
    try:
        # Everyone behind moved up: told from the heartbeat thread, off the first token's path.
        with Heartbeat(answer, first=lambda: queue.publish_queue(pool)) as heartbeat:
            answer = generate(answer, heartbeat.cancelled, heartbeat)
        wake_follow_ups(answer)
        titles.request_title(answer)
        return answer
    finally:
        # Follow-ups that waited for this answer can run now, or titles: wake a worker.
        if queue.anything_queued(pool) or titles.pending_in(pool):
            wakeups.wake(pool)


def generate(
    answer: Message,
    cancelled: threading.Event | None = None,
    heartbeat: Heartbeat | None = None,
) -> Message:
    """Stream a claimed answer, then save the outcome. ``cancelled`` is Stop, pressed (or
    the heartbeat's time limit, which it then reports as ``timed_out``)."""
    cancelled = cancelled or threading.Event()
    streams.publish_message(answer)
    # A continued answer starts from its checkpoint: same text, seq counting on.
    stream = AnswerStream(
        answer,
        text=answer.content,
        seq=answer.seq,
        flushed_chars=len(answer.content),
        saver=heartbeat.checkpoint if heartbeat is not None else None,
    )
    finished: Finished | None = None
    status, error = Message.Status.DONE, ""
    try:
        if answer.model is None:
            raise BackendError("The model of this answer was deleted.")
        request = until_database_returns(lambda: build_request(answer))
        stream.prompt_estimate = estimated_prompt_tokens(request)
        items = get_backend(answer.model.backend).stream(request, cancelled)
        try:
            with LIVE_STREAMS:
                for item in items:
                    if cancelled.is_set():
                        break
                    if isinstance(item, Finished):
                        finished = item
                    elif stream.add(item.text):
                        stream.flush()
        finally:
            items.close()  # closes the upstream stream (llama.cpp loop or HTTP response)
        if heartbeat is not None and heartbeat.lost:
            raise LostOwnership  # a beat or the reaper found it taken: nothing more is ours
        stream.flush()
        # Cancelled after the last token (a late Stop, the shutdown): it is whole, and done.
        if cancelled.is_set() and finished is None:
            if _handing_off(answer, heartbeat):
                return hand_off(answer, stream.text, stream.seq)
            status, error = Message.Status.STOPPED, _why_stopped(heartbeat)
    except LostOwnership:
        return _drop_attempt(answer)
    except BackendError as exc:
        logger.warning("answer %s failed: %s %s", answer.pk, exc, exc.detail)
        status, error = Message.Status.FAILED, str(exc)
        if cancelled.is_set():  # the upstream connection was closed on purpose
            if _handing_off(answer, heartbeat):
                stream.flush()
                return hand_off(answer, stream.text, stream.seq)
            status, error = Message.Status.STOPPED, _why_stopped(heartbeat)
    except Exception:
        # The person sees that it failed; the details (which may name hosts, connection
        # strings or driver messages) go to the worker's log only.
        logger.exception("answer %s failed", answer.pk)
        status, error = Message.Status.FAILED, INTERNAL_ERROR
    try:
        stream.flush()  # whatever the error left unsent
    except LostOwnership:
        return _drop_attempt(answer)
    return _save_outcome(stream, finished, status, error)


# A usual tokenizer's average on English text; only for answers that end without a
# usage record.
CHARS_PER_TOKEN = 4


def estimated_prompt_tokens(request: GenerationRequest) -> int:
    """About how many tokens ``request``'s prompt is (its messages and the text it
    continues)."""
    chars = sum(len(m.content) for m in request.messages) + len(request.continue_from)
    return -(-chars // CHARS_PER_TOKEN)


def _ending_landed(answer: Message, status: str, error: str, text: str) -> bool:
    """Whether the row already holds this attempt's ending: the connection dropped after
    COMMIT reached the database but before its answer came back, so the retry found
    nothing left to change. Its usage was recorded in that transaction; the clients'
    notice (sent after commit) was not, and is sent now."""
    try:
        landed = until_database_returns(
            lambda: Message.objects.filter(
                pk=answer.pk, attempts=answer.attempts, status=status, error=error, content=text
            ).exists()
        )
        if landed:
            answer.refresh_from_db()
    except DATABASE_DOWN:
        return False
    if landed:
        streams.publish_message(answer)
    return landed


def _handing_off(answer: Message, heartbeat: Heartbeat | None) -> bool:
    """Whether the cancel was this worker shutting down (the answer goes on elsewhere), not
    a Stop: one pressed too is honoured as a Stop."""
    return (
        heartbeat is not None
        and heartbeat.handed_off
        and not stop_flags.stop_requested(answer.pk, answer.attempts)
    )


def _why_stopped(heartbeat: Heartbeat | None) -> str:
    if heartbeat is not None and heartbeat.timed_out:
        return f"Stopped at the time limit of {config.MAX_GENERATION_S:g} s."
    return STOPPED_BY_USER


def _drop_attempt(answer: Message) -> Message:
    logger.warning(
        "answer %s was taken from this worker; dropping attempt %s", answer.pk, answer.attempts
    )
    stop_flags.clear(answer.pk, answer.attempts)
    return answer


def _save_outcome(
    stream: AnswerStream, finished: Finished | None, status: str, error: str
) -> Message:
    answer = stream.answer
    ended = time.monotonic()
    fields: dict[str, Any] = {"content": stream.text, "seq": stream.seq}
    if status == Message.Status.DONE and finished and finished.reason == "length":
        error = "Stopped at the maximum number of tokens."
    if finished is not None:
        fields["prompt_tokens"] = finished.usage.prompt_tokens
        fields["completion_tokens"] = finished.usage.completion_tokens
    else:
        if stream.chunks:  # stopped or failed mid-stream: a chunk is about one token
            fields["completion_tokens"] = stream.chunks
        if stream.chunks or status == Message.Status.STOPPED:
            # Its prompt was read (or was being read) too: it counts against quotas, or
            # stopping answers before their end, or before their first token, would make
            # every prompt free.
            fields["prompt_tokens"] = stream.prompt_estimate
    if stream.first_token is not None:
        fields["time_to_first_token_ms"] = int((stream.first_token - stream.started) * 1000)
        generating_s = ended - stream.first_token
        tokens = fields.get("completion_tokens") or 0
        if tokens > 1 and generating_s > 0:
            fields["tokens_per_second"] = round((tokens - 1) / generating_s, 2)
    attempt = answer.attempts
    try:
        # The answer is over whatever the database says now: its ending waits for it.
        saved = until_database_returns(
            lambda: end_answer(answer, status, error, only=still_ours(answer), **fields)
        )
    except DATABASE_DOWN:
        # Still down: the attempt stays "running" without a heartbeat, so the reaper
        # continues it (or runs it again) once the database is back.
        logger.error("answer %s: could not save its ending", answer.pk, exc_info=True)
        return answer
    if not saved and not _ending_landed(answer, status, error, stream.text):
        # Reaped (re-queued, maybe re-claimed) or deleted while it ran: the row is another
        # attempt's now, and so is its stop flag.
        return _drop_attempt(answer)
    stop_flags.clear(answer.pk, attempt)
    streams.flush(timeout=2)  # a pool child may exit after this job: send what is queued
    return answer
