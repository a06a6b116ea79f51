"""Stop requests travel through Redis: the worker polls a key between chunks.

A Redis outage must not fail a healthy answer: the worker treats an unreadable flag as
"not requested", and clearing a flag is best-effort (it expires anyway).
"""

from __future__ import annotations

import logging

import redis

from webui.chat import redis_client

logger = logging.getLogger("corral.stop")

_TTL_S = 3600


def _key(message_id: int, attempt: int) -> str:
    # Scoped to the attempt: a flag never outlives the run it was meant for.
    return f"corral:stop:{message_id}:{attempt}"


def _revoked_key(message_id: int, attempt: int) -> str:
    return f"corral:revoked:{message_id}:{attempt}"


def request_stop(message_id: int, attempt: int) -> None:
    redis_client.shared().set(_key(message_id, attempt), 1, ex=_TTL_S)


def stop_requested(message_id: int, attempt: int) -> bool:
    try:
        return bool(redis_client.shared().exists(_key(message_id, attempt)))
    except redis.RedisError:
        logger.warning("cannot read the stop flag of answer %s", message_id, exc_info=True)
        return False


def clear(message_id: int, attempt: int) -> None:
    try:
        redis_client.shared().delete(_key(message_id, attempt), _revoked_key(message_id, attempt))
    except redis.RedisError:
        logger.warning("cannot clear the stop flag of answer %s", message_id, exc_info=True)


def revoke(message_id: int, attempt: int) -> None:
    """The reaper took the answer from this attempt (re-queued or ended it): a worker
    still running it, cut off from the database but not from Redis, stops within a poll
    instead of streaming text the answer no longer has."""
    try:
        redis_client.shared().set(_revoked_key(message_id, attempt), 1, ex=_TTL_S)
    except redis.RedisError:
        logger.warning("cannot revoke attempt %s of answer %s", attempt, message_id, exc_info=True)


def flags(message_id: int, attempt: int) -> tuple[bool, bool]:
    """(Stop requested, revoked by the reaper) for one attempt, in one round trip: the
    running answer's watcher asks four times a second."""
    try:
        stop, revoked = redis_client.shared().mget(
            _key(message_id, attempt), _revoked_key(message_id, attempt)
        )
    except redis.RedisError:
        logger.warning("cannot read the stop flag of answer %s", message_id, exc_info=True)
        return False, False
    return stop is not None, revoked is not None
