from __future__ import annotations

import pytest
import redis

from webui import config
from webui.chat import fleet

# The suite's Celery worker consumes only `cpu`; tests here run jobs themselves, so their
# models live in the `gpu` pool and a running test worker cannot take the job first.
UNSERVED_POOL = "gpu"


@pytest.fixture
def gemma(gemma):
    gemma.pool = UNSERVED_POOL
    gemma.save()
    yield gemma
    redis.Redis.from_url(config.redis_url()).delete(UNSERVED_POOL)


@pytest.fixture
def cpu_model(db):
    """A second model in another pool; nothing here ever runs it."""
    from webui.chat.models import LanguageModel

    return LanguageModel.objects.create(
        name="other-pool", backend="llama_cpp", target="/nonexistent.gguf", pool="cpu"
    )


@pytest.fixture
def gpu_worker_alive():
    """Redis says a worker of the unserved pool is alive (none runs: nothing claims)."""
    from webui.chat import wakeups

    wakeups.note_worker_alive(UNSERVED_POOL, "test-presence", for_s=300)
    yield
    wakeups.forget_worker(UNSERVED_POOL, "test-presence")


@pytest.fixture
def clean_fleet():
    """No reports but the test's own, before and after (a Redis shared with an earlier
    run, or workers of other tests, may hold some)."""
    for entry in fleet.fleet():
        fleet.forget(entry["report"]["worker"])
    yield
    for entry in fleet.fleet():
        fleet.forget(entry["report"]["worker"])
