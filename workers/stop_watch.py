"""One thread per worker process watches Stop, the reaper's revoke mark and the time
limit of every answer the process runs: one Redis round trip for all of them, four times
a second, instead of a thread and a round trip per answer (with a batch of 32, that was
32 threads and 128 calls a second competing with the decode loop for the GIL)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Protocol

from webui.chat import stop_flags

logger = logging.getLogger("corral.stop_watch")

STOP_POLL_S = 0.25


class Watched(Protocol):
    """What the watch needs of a running answer (``workers.heartbeat.Heartbeat``)."""

    def watched_attempt(self) -> tuple[int, int]: ...

    def flags_read(self, stop: bool, revoked: bool) -> None: ...


class StopWatch:
    def __init__(self, poll_s: float = STOP_POLL_S) -> None:
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._watched: dict[int, Watched] = {}
        self._pid: int | None = None

    def add(self, watched: Watched) -> None:
        with self._lock:
            # Per process: a forked Celery pool child starts its own thread.
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._watched = {}
                threading.Thread(target=self._run, name="corral-stop-watch", daemon=True).start()
            self._watched[id(watched)] = watched

    def remove(self, watched: Watched) -> None:
        with self._lock:
            self._watched.pop(id(watched), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.poll_s)
            try:
                self.check()
            except Exception:  # the watch must outlive any one bad read
                logger.exception("the stop watch failed a round")

    def check(self) -> None:
        """One round: read every watched answer's flags and tell each what was found."""
        with self._lock:
            watched = list(self._watched.values())
        if not watched:
            return
        found = stop_flags.flags_of([w.watched_attempt() for w in watched])
        for one, (stop, revoked) in zip(watched, found, strict=True):
            one.flags_read(stop, revoked)


# The process's watch (``Heartbeat`` registers with it).
watch = StopWatch()
