"""Stop requests travel through Redis: the worker polls a key between chunks.

A Redis outage must not fail a healthy answer: the worker treats an unreadable flag as
"not requested", and clearing a flag is best-effort (it expires anyway).

Flags are keyed by answer id and attempt, and ids repeat: a database reset (or SQLite
reusing the id of a deleted row) while Redis keeps its keys. So a claim clears the flags
its attempt already had (``leftovers_of`` before, ``clear_leftovers`` after), else an old
flag stops or revokes an answer nobody touched. Each flag's value is unique, so a Stop
pressed just after the claim is told apart from a leftover and kept.
"""

from __future__ import annotations

import logging
import secrets

import redis

from webui.chat import redis_client

logger = logging.getLogger("corral.stop")

_TTL_S = 3600


def _key(message_id: int, attempt: int) -> str:
    # Scoped to the attempt: a flag never outlives the run it was meant for.
    return f"corral:stop:{message_id}:{attempt}"


def _revoked_key(message_id: int, attempt: int) -> str:
    return f"corral:revoked:{message_id}:{attempt}"


def _both(message_id: int, attempt: int) -> list[str]:
    """An attempt's stop flag and revoke mark, in that order."""
    return [_key(message_id, attempt), _revoked_key(message_id, attempt)]


def _mark() -> str:
    return secrets.token_hex(8)


def request_stop(message_id: int, attempt: int) -> None:
    redis_client.shared().set(_key(message_id, attempt), _mark(), ex=_TTL_S)


def stop_requested(message_id: int, attempt: int) -> bool:
    try:
        return bool(redis_client.shared().exists(_key(message_id, attempt)))
    except redis.RedisError:
        logger.warning("cannot read the stop flag of answer %s", message_id, exc_info=True)
        return False


def clear(message_id: int, attempt: int) -> None:
    try:
        redis_client.shared().delete(*_both(message_id, attempt))
    except redis.RedisError:
        logger.warning("cannot clear the stop flag of answer %s", message_id, exc_info=True)


def leftovers_of(message_id: int, attempt: int) -> dict[str, bytes | str]:
    """The flags an attempt has before it is claimed: a leftover, as nobody flags an
    attempt that has not started."""
    keys = _both(message_id, attempt)
    try:
        values = redis_client.shared().mget(keys)
    except redis.RedisError:
        logger.warning("cannot read the old flags of answer %s", message_id, exc_info=True)
        return {}
    return {key: value for key, value in zip(keys, values, strict=True) if value is not None}


# Deletes each key only while it still holds the value read before the claim.
_DELETE_UNCHANGED = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then redis.call('DEL', key) end
end
"""


def clear_leftovers(found: dict[str, bytes | str]) -> None:
    """Delete the leftovers ``leftovers_of`` found, once the claim is won; a flag set
    since (a Stop of the new attempt) holds another value and stays."""
    if not found:
        return
    try:
        redis_client.shared().eval(_DELETE_UNCHANGED, len(found), *found, *found.values())
    except redis.RedisError:
        logger.warning("cannot clear the old flags %s", sorted(found), exc_info=True)


def revoke(message_id: int, attempt: int) -> None:
    """The reaper took the answer from this attempt (re-queued or ended it): a worker
    still running it, cut off from the database but not from Redis, stops within a poll
    instead of streaming text the answer no longer has."""
    try:
        redis_client.shared().set(_revoked_key(message_id, attempt), _mark(), ex=_TTL_S)
    except redis.RedisError:
        logger.warning("cannot revoke attempt %s of answer %s", attempt, message_id, exc_info=True)


def flags_of(attempts: list[tuple[int, int]]) -> list[tuple[bool, bool]]:
    """(Stop requested, revoked by the reaper) for each (answer id, attempt), in one round
    trip: a worker's stop watch asks four times a second for all its running answers."""
    if not attempts:
        return []
    keys = [key for message_id, attempt in attempts for key in _both(message_id, attempt)]
    try:
        values = redis_client.shared().mget(keys)
    except redis.RedisError:
        logger.warning("cannot read the stop flags of %s answers", len(attempts), exc_info=True)
        return [(False, False)] * len(attempts)
    return [(values[i] is not None, values[i + 1] is not None) for i in range(0, len(values), 2)]
