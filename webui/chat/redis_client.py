"""Redis clients with timeouts: a Redis that hangs instead of refusing stalls a caller for
seconds (it then gets a ``redis.TimeoutError``, a ``RedisError``), not for good."""

from __future__ import annotations

from functools import cache

import redis
import redis.asyncio as aioredis

from webui import config

# Every call here is a single small command: seconds are plenty.
TIMEOUT_S = 2.0


def sync_client() -> redis.Redis:
    return redis.Redis.from_url(
        config.redis_url(), socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
    )


def async_client() -> aioredis.Redis:
    return aioredis.Redis.from_url(
        config.redis_url(), socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
    )


@cache
def shared() -> redis.Redis:
    """This process's client for small commands (stop flags, wake-ups, replay buffers,
    queue rounds, fleet reports): redis-py's client is thread-safe, with a pool of
    connections, so one serves every thread."""
    return sync_client()
