"""Riding out a database outage: a running answer keeps generating (tokens travel through
Redis), its checkpoints wait for the database, and its ending is saved once the database
answers again. Staleness during an outage is the outage's, not a lost worker's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, close_old_connections
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from webui import config

logger = logging.getLogger("corral.outages")

# What a database that is down, restarting or unreachable raises (a lost connection, a
# refused one, "the database system is starting up"); not a bug in a query.
DATABASE_DOWN = (OperationalError, InterfaceError)

T = TypeVar("T")


def _reconnect(state: RetryCallState) -> None:
    """Before the next try: drop the broken connection, so the try opens a new one."""
    if state.attempt_number == 1:
        logger.warning(
            "the database is unreachable; retrying for up to %g s",
            config.DB_OUTAGE_S,
            exc_info=state.outcome.exception() if state.outcome else None,
        )
    close_old_connections()


def until_database_returns(write: Callable[[], T]) -> T:
    """Run ``write`` (one database operation, or a transaction), trying again through an
    outage of up to ``CORRAL_DB_OUTAGE_S``; past that, the last error is raised."""
    retrying = Retrying(
        retry=retry_if_exception_type(DATABASE_DOWN),
        wait=wait_exponential(multiplier=0.2, max=2),
        stop=stop_after_delay(config.DB_OUTAGE_S),
        before_sleep=_reconnect,
        reraise=True,
    )
    return retrying(write)


class OutageGrace:
    """For the reaper: after an outage, heartbeats need a moment to land again. Until
    then an answer looks stale because its worker could not write, not because it died."""

    def __init__(self) -> None:
        self._until = 0.0

    def outage_seen(self) -> None:
        self._until = time.monotonic() + config.HEARTBEAT_STALE_S

    def over(self) -> bool:
        return time.monotonic() >= self._until
