"""Prometheus metrics, read when scraped: the database and Redis are the truth, so every
web process reports the same figures whichever one a scrape reaches (only open websockets
are this process's own).

Counters and histograms come from the usage ledger (``AnswerRecord``: one row per answer,
kept when its conversation is deleted), so they only grow, as Prometheus expects (unless a
person is deleted); ``rate()`` over ``corral_completion_tokens_total`` gives tokens per
second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import redis
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, QuerySet, Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from webui.chat import wakeups
from webui.chat.models import AnswerRecord, Message
from webui.chat.pools import POOLS
from webui.library.models import JobKind, JobState, ModelJob

logger = logging.getLogger("corral.metrics")

TTFT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_WAIT_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
TOKENS_PER_SECOND_BUCKETS = (1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 1000.0)


class _OpenSockets:
    """Conversation websockets open in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def opened(self) -> None:
        with self._lock:
            self.count += 1

    def closed(self) -> None:
        with self._lock:
            self.count -= 1


OPEN_SOCKETS = _OpenSockets()


def _histogram(
    name: str,
    documentation: str,
    rows: QuerySet[Any],
    field: str,
    buckets: Sequence[float],
    bound: Callable[[float], Any],
    seconds: Callable[[Any], float],
) -> HistogramMetricFamily:
    """A histogram of ``field`` over ``rows``, counted in one query: ``bound`` turns a
    bucket's upper bound into the field's unit, ``seconds`` the field's sum into the
    metric's unit."""
    counts = rows.aggregate(
        total=Count("pk"),
        sum=Sum(field),
        **{
            f"le_{i}": Count("pk", filter=Q(**{f"{field}__lte": bound(b)}))
            for i, b in enumerate(buckets)
        },
    )
    histogram = HistogramMetricFamily(name, documentation)
    histogram.add_metric(
        [],
        [(str(b), counts[f"le_{i}"]) for i, b in enumerate(buckets)] + [("+Inf", counts["total"])],
        seconds(counts["sum"]) if counts["sum"] is not None else 0.0,
    )
    return histogram


class CorralCollector:
    def collect(self) -> Iterator[Metric]:
        answers = Message.objects.filter(role=Message.Role.ASSISTANT)

        depth = GaugeMetricFamily(
            "corral_queue_depth", "Answers waiting in each pool's queue.", labels=["pool"]
        )
        queued = dict(
            answers.filter(status=Message.Status.QUEUED)
            .values_list("model__pool")
            .annotate(n=Count("pk"))
            .values_list("model__pool", "n")
        )
        for pool in POOLS:
            depth.add_metric([pool], queued.get(pool, 0))
        yield depth

        states = GaugeMetricFamily(
            "corral_answers", "Answers in the database by state.", labels=["state"]
        )
        by_state = dict(
            answers.values_list("status").annotate(n=Count("pk")).values_list("status", "n")
        )
        for state in Message.Status.values:
            states.add_metric([state], by_state.get(state, 0))
        yield states

        jobs = GaugeMetricFamily(
            "corral_model_jobs", "Admins' model jobs by state.", labels=["kind", "state"]
        )
        by_kind_state = {
            (kind, state): n
            for kind, state, n in ModelJob.objects.values_list("kind", "state")
            .annotate(n=Count("pk"))
            .values_list("kind", "state", "n")
        }
        for kind in JobKind.values:
            for state in JobState.values:
                jobs.add_metric([kind, state], by_kind_state.get((kind, state), 0))
        yield jobs

        alive = GaugeMetricFamily(
            "corral_workers_alive", "Worker processes that noted themselves alive.", labels=["pool"]
        )
        try:
            for pool in POOLS:
                alive.add_metric([pool], wakeups.live_workers(pool))
            yield alive
        except redis.RedisError:  # left out of this scrape: Redis cannot say
            logger.warning("metrics: cannot count live workers", exc_info=True)

        sockets = GaugeMetricFamily(
            "corral_open_websockets", "Conversation websockets open in this web process."
        )
        sockets.add_metric([], OPEN_SOCKETS.count)
        yield sockets

        tokens = CounterMetricFamily(
            "corral_completion_tokens", "Tokens generated, over every answer ever admitted."
        )
        tokens.add_metric([], AnswerRecord.objects.aggregate(n=Sum("completion_tokens"))["n"] or 0)
        yield tokens

        records = AnswerRecord.objects.all()
        yield _histogram(
            "corral_time_to_first_token_seconds",
            "From the start of generation to the first token, per answer.",
            records.filter(time_to_first_token_ms__isnull=False),
            "time_to_first_token_ms",
            TTFT_BUCKETS_S,
            bound=lambda seconds: seconds * 1000,
            seconds=lambda milliseconds: milliseconds / 1000,
        )
        waits = records.filter(started_at__isnull=False).annotate(
            wait=ExpressionWrapper(F("started_at") - F("created_at"), output_field=DurationField())
        )
        yield _histogram(
            "corral_queue_wait_seconds",
            "From the message sent to its answer starting, per answer.",
            waits,
            "wait",
            QUEUE_WAIT_BUCKETS_S,
            bound=lambda seconds: timedelta(seconds=seconds),
            seconds=lambda wait: wait.total_seconds(),
        )
        yield _histogram(
            "corral_answer_tokens_per_second",
            "Generation speed of each finished answer.",
            records.filter(tokens_per_second__isnull=False),
            "tokens_per_second",
            TOKENS_PER_SECOND_BUCKETS,
            bound=float,
            seconds=float,
        )


# Not described at registration: that would query the database on import.
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(CorralCollector())


def exposition() -> bytes:
    """Every metric in Prometheus's text format."""
    return generate_latest(REGISTRY)
