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
        redis_client.shared().delete(_key(message_id, attempt))
    except redis.RedisError:
        logger.warning("cannot clear the stop flag of answer %s", message_id, exc_info=True)
