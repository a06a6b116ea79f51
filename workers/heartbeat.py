"""The heartbeat beside each running answer: it beats, and (through the process's stop
watch) hears Stop and keeps the time limit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.db import close_old_connections, connection
from django.db.models.functions import Now

from webui import config
from webui.chat.models import Message
from workers.claims import still_ours
from workers.stop_watch import watch

logger = logging.getLogger("corral.heartbeat")


class Heartbeat:
    """Beside one running answer. The process's stop watch (``workers.stop_watch``) reads
    its stop flag (Redis) and keeps its time limit, so Stop lands within a second even
    while no token arrives: it sets ``cancelled``, which the generation loop and the
    backend watch. A thread of its own beats in the database, so long prompt evaluations
    and slow upstream servers do not look like a lost worker. They are apart because a
    beat can wait on the database (a locked row, an outage) for as long as the database
    makes it: Stop and the time limit must not."""

    def __init__(self, answer: Message, first: Callable[[], None] | None = None) -> None:
        """``first`` runs in the beating thread as it starts: work that must not delay the
        first token (telling the rest of the queue that it moved up)."""
        self.answer = answer
        self._first = first
        self.cancelled = threading.Event()
        # Set with ``cancelled`` when the answer ran past CORRAL_MAX_GENERATION_S, even if
        # the backend went silent and no token arrives to check it.
        self.timed_out = False
        # Set with ``cancelled`` when a beat found the attempt no longer ours.
        self.lost = False
        # Set with ``cancelled`` when this worker, shutting down, gives the answer to another.
        self.handed_off = False
        self._deadline = time.monotonic() + config.MAX_GENERATION_S
        self._stop = threading.Event()
        # The latest checkpoint (text, seq) not yet written, and what wakes the beating
        # thread for it (or for the end).
        self._checkpoint: tuple[str, int] | None = None
        self._checkpoint_lock = threading.Lock()
        self._wake = threading.Event()
        self._beater = threading.Thread(target=self._beat, name="corral-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._beater.start()
        watch.add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()  # first: a round of the watch under way now changes nothing
        watch.remove(self)
        self._wake.set()
        # A beat waiting on the database ends by itself once it returns (the row is no
        # longer this attempt's to write by then): the answer's end does not wait for it.
        self._beater.join(timeout=0.5)

    def checkpoint(self, text: str, seq: int) -> None:
        """Save the answer's delivered ``text`` (up to delta ``seq``) with the next beat,
        which is due now: written from the beating thread, so a database that makes the
        write wait (a locked row, a cut connection) never holds up the tokens, Stop or
        the time limit. A newer checkpoint replaces one not yet written."""
        with self._checkpoint_lock:
            self._checkpoint = (text, seq)
        self._wake.set()

    def _take_checkpoint(self) -> tuple[str, int] | None:
        with self._checkpoint_lock:
            taken, self._checkpoint = self._checkpoint, None
        return taken

    def _keep_checkpoint(self, checkpoint: tuple[str, int]) -> None:
        """A checkpoint whose write failed waits for the next beat, unless a newer came."""
        with self._checkpoint_lock:
            if self._checkpoint is None:
                self._checkpoint = checkpoint

    def hand_off(self) -> None:
        """Stop generating: the worker is shutting down and another one continues."""
        self.handed_off = True
        self.cancelled.set()

    @property
    def beating(self) -> bool:
        return self._beater.is_alive()

    def watched_attempt(self) -> tuple[int, int]:
        return self.answer.pk, self.answer.attempts

    def flags_read(self, stop: bool, revoked: bool) -> None:
        """What the stop watch found for this attempt (four times a second)."""
        if self._stop.is_set():
            return  # ended meanwhile
        if stop:
            self.cancelled.set()
        elif revoked:
            self.lost = True  # the reaper has it: nothing more of this attempt is saved
            self.cancelled.set()
        if time.monotonic() > self._deadline:
            self.timed_out = True
            self.cancelled.set()

    def _beat(self) -> None:
        try:
            if self._first is not None:
                try:
                    self._first()
                except Exception:
                    logger.warning("could not publish the queue", exc_info=True)
            next_beat = time.monotonic() + config.HEARTBEAT_INTERVAL_S
            failing = False
            while True:
                self._wake.wait(max(0.0, next_beat - time.monotonic()))
                self._wake.clear()
                if self._stop.is_set():
                    return
                checkpoint = self._take_checkpoint()
                if checkpoint is None and time.monotonic() < next_beat:
                    continue
                if time.monotonic() > self._deadline + config.HEARTBEAT_STALE_S:
                    # Past the time limit and still not ended: the backend call hangs.
                    # Silence lets the reaper end the answer.
                    logger.warning("answer %s hangs past its time limit", self.answer.pk)
                    return
                fields: dict[str, object] = {"heartbeat_at": Now()}
                if checkpoint is not None:
                    # Text and seq move together: a reconnecting client adds the deltas
                    # after seq.
                    fields["content"], fields["seq"] = checkpoint
                try:  # a failed beat (a locked or restarting database) must not end them
                    beat = Message.objects.filter(still_ours(self.answer)).update(**fields)
                except Exception:
                    if not failing:  # once an outage: the answer goes on meanwhile
                        what = "checkpoint" if checkpoint is not None else "heartbeat"
                        logger.warning(
                            "answer %s: %s failed, generating on",
                            self.answer.pk,
                            what,
                            exc_info=True,
                        )
                    failing = True
                    close_old_connections()
                    if checkpoint is not None:
                        self._keep_checkpoint(checkpoint)
                    next_beat = time.monotonic() + config.HEARTBEAT_INTERVAL_S
                    continue
                next_beat = time.monotonic() + config.HEARTBEAT_INTERVAL_S
                failing = False
                if not beat:
                    # Reaped, stopped or deleted: this attempt is not ours to write any more.
                    self.lost = True
                    self.cancelled.set()
                    return
        finally:
            connection.close()  # this thread's own connection
