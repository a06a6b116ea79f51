"""Another transaction holding an answer's row: the wait a locked row (or a database that
does not answer) puts on every write to it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction

from webui.chat.models import Message


@contextmanager
def row_held(pk: int) -> Iterator[None]:
    """Within the block, a transaction on another connection has updated the row and not
    committed: every other write to it waits (PostgreSQL's row lock, SQLite's write lock)."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                Message.objects.filter(pk=pk).update(served_by="")
                locked.set()
                release.wait(timeout=60)
        finally:
            connection.close()

    holder = threading.Thread(target=hold, name="row-holder")
    holder.start()
    try:
        assert locked.wait(timeout=10), "could not take the row"
        yield
    finally:
        release.set()
        holder.join(timeout=60)
