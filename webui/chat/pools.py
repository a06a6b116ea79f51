"""Queue names: one Celery queue per worker pool. A job goes to its model's pool."""

GPU = "gpu"
CPU = "cpu"
POOLS = (GPU, CPU)


def queue_for_pool(pool: str) -> str:
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
    return pool
