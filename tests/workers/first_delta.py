"""Waiting for an answer's first delta, as tests that act mid-stream do."""

from __future__ import annotations

import time

from webui.chat import redis_client, streams


def fresh_replay(answer_pk: int) -> str:
    """The replay list of the answer's first attempt, emptied: ids repeat across test
    databases while Redis keeps its keys, and an earlier run's list would look like this
    run's first delta. Call it before the worker starts."""
    streams.reset_replay(answer_pk, 1)
    return streams.replay_key(answer_pk, 1)


def wait_for_first_delta(replay: str, timeout: float = 60) -> None:
    """Until ``replay`` (from ``fresh_replay``) holds a delta; ``timeout`` covers a
    model load."""
    deadline = time.monotonic() + timeout
    while not redis_client.shared().llen(replay) and time.monotonic() < deadline:
        time.sleep(0.005)
