"""On PostgreSQL every connection carries libpq's network timeouts, so a query on a cut
connection fails within CORRAL_DB_NETWORK_TIMEOUT_S (and is retried on a new one) instead
of hanging a worker's heartbeat, checkpoint or ending for the kernel's ~15 minutes."""

from __future__ import annotations

import pytest
from django.db import connection

from webui import config

pytestmark = pytest.mark.django_db


def test_a_postgresql_connection_gives_up_on_a_silent_network():
    if connection.vendor != "postgresql":
        pytest.skip("libpq's timeouts are PostgreSQL's")
    connection.ensure_connection()
    parameters = connection.connection.info.get_parameters()
    assert parameters["tcp_user_timeout"] == str(config.DB_NETWORK_TIMEOUT_S * 1000)
    assert parameters["keepalives"] == "1"
    assert int(parameters["keepalives_idle"]) <= config.DB_NETWORK_TIMEOUT_S
    assert int(parameters["connect_timeout"]) <= config.DB_NETWORK_TIMEOUT_S
