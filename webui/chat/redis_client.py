"""The Redis client of this process's background threads (queue rounds, fleet reports):
with timeouts, so a Redis that hangs instead of refusing stalls them for seconds, not for
good."""

from __future__ import annotations

from functools import cache

import redis

from webui import config


@cache
def background_redis() -> redis.Redis:
    return redis.Redis.from_url(config.redis_url(), socket_timeout=2, socket_connect_timeout=2)
