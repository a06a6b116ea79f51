"""Stop requests travel through Redis: the worker polls a key between chunks."""

from __future__ import annotations

from functools import cache

import redis

from webui import config

_TTL_S = 3600


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(config.redis_url())


def _key(message_id: int) -> str:
    return f"corral:stop:{message_id}"


def request_stop(message_id: int) -> None:
    _client().set(_key(message_id), 1, ex=_TTL_S)


def stop_requested(message_id: int) -> bool:
    return bool(_client().exists(_key(message_id)))


def clear(message_id: int) -> None:
    _client().delete(_key(message_id))
