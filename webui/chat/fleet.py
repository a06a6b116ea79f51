"""The fleet: every worker process that runs answers reports in, and admins see them.

A worker process (``workers/fleet.py``) sends a report every ``CORRAL_REAP_INTERVAL_S``:
its host, pid, pools, the models it has loaded, the answers in its batch, its recent
tokens/s and its GPU. Reports live in Redis, stamped with Redis's clock; one that missed
``BEATS_ALIVE`` beats is shown as lost (the reaper has already handled its answers), and
it is dropped ``KEEP_LOST_S`` later.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NotRequired, TypedDict, cast

import redis

from webui.chat.redis_client import shared as shared_redis

logger = logging.getLogger("corral.fleet")

BEATS_ALIVE = 3
KEEP_LOST_S = 600
_INDEX = "corral:fleet"  # sorted set: worker id -> when it last reported (Redis's clock)


class GpuReport(TypedDict):
    name: str
    memory_total_mib: int
    memory_used_mib: int


class WorkerReport(TypedDict):
    worker: str  # "host:pid", as answers' ``worker`` field names it
    host: str
    pid: int
    pools: list[str]
    models: list[str]  # what the process has loaded (file paths for llama.cpp)
    answers: int  # in its batch now
    tokens_per_second: float  # over its last beat
    gpus: list[GpuReport]
    interval_s: float
    draining: NotRequired[bool]  # shutting down (absent from an older worker's reports)


class FleetEntry(TypedDict):
    report: WorkerReport
    seen_s_ago: float
    lost: bool


def _now(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return float(seconds) + float(microseconds) / 1e6


def _key(worker: str) -> str:
    return f"{_INDEX}:{worker}"


def report(entry: WorkerReport) -> None:
    """Note ``entry`` as its worker's latest report (raises RedisError)."""
    client = shared_redis()
    now = _now(client)
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(_INDEX, {entry["worker"]: now})
        pipe.set(_key(entry["worker"]), json.dumps(entry), ex=KEEP_LOST_S)
        pipe.zremrangebyscore(_INDEX, "-inf", now - KEEP_LOST_S)
        pipe.execute()


def forget(worker: str) -> None:
    """A worker process that stops cleanly leaves the fleet at once."""
    client = shared_redis()
    client.zrem(_INDEX, worker)
    client.delete(_key(worker))


def fleet() -> list[FleetEntry]:
    """Every worker process that reported lately, live ones first, then by id."""
    client = shared_redis()
    now = _now(client)
    # redis-py types its replies loosely: with scores, these are (member, score) pairs.
    seen = cast(
        list[tuple[bytes, float]],
        client.zrangebyscore(_INDEX, now - KEEP_LOST_S, "+inf", withscores=True),
    )
    if not seen:
        return []
    reports = client.mget([_key(worker.decode()) for worker, _ in seen])
    entries: list[FleetEntry] = []
    for (_, at), raw in zip(seen, reports, strict=True):
        if raw is None:
            continue
        entry: WorkerReport = json.loads(raw)
        ago = max(0.0, now - at)
        entries.append(
            {
                "report": entry,
                "seen_s_ago": round(ago, 1),
                "lost": ago > BEATS_ALIVE * entry["interval_s"],
            }
        )
    entries.sort(key=lambda e: (e["lost"], e["report"]["worker"]))
    return entries


def describe(entries: list[FleetEntry]) -> list[dict[str, Any]]:
    """For the page: each entry with its models' names as admins know them."""
    from webui.chat.models import LanguageModel

    names = dict(LanguageModel.objects.values_list("target", "name"))
    return [
        {
            **entry,
            "model_names": [names.get(target, target) for target in entry["report"]["models"]],
        }
        for entry in entries
    ]
