"""Which worker a wake-up goes to: the one that already has the next answer's model
loaded and is idle, when there is one (no load of seconds, no second copy of the model in
memory); else an idle one with nothing loaded; else the pool's queue, where any worker of
the pool takes it and loads the model (giving up its least recently used one if need be).

Each worker also consumes a queue of its own (``<node name>.dq``, added when it starts:
``workers.celery_app``); the Fleet reports say what each has loaded and how many answers
it runs. A report is at most a few seconds old, so this is a preference, not a promise: a
direct wake-up to a worker that just became busy waits until it is free, and a busy
worker's call for help goes to the pool queue, never back to itself.
"""

from __future__ import annotations

from webui.chat import fleet, queue
from webui.chat.models import Backend


def direct_queue(node: str) -> str:
    """The queue only the worker named ``node`` consumes."""
    return f"{node}.dq"


def is_direct_queue(queue: str) -> bool:
    return queue.endswith(".dq")


def node_of_queue(queue: str) -> str:
    """The node name of a ``direct_queue``."""
    return queue.removesuffix(".dq")


def node_of(worker: str) -> str:
    """A worker id is "<node name>:<pid>" (answers and Fleet reports name it so)."""
    return worker.rsplit(":", 1)[0]


def next_model_target(pool: str) -> str | None:
    """The GGUF of the fairest answer a worker of ``pool`` could claim now."""
    # Every message sent wakes a worker, so this runs once per message, a burst of them
    # one after another: when the claimable answers all want one model (the usual case)
    # one query says which, without putting the queue in its fair order.
    models = list(
        queue.claimable_in(pool).values_list("model__backend", "model__target").distinct()[:2]
    )
    if len(models) < 2:
        backend, target = models[0] if models else (None, None)
        return target if backend == Backend.LLAMA_CPP else None
    for candidate in queue.queue_of(pool):
        if queue.waits_for_earlier_answer(candidate):
            continue
        model = candidate.model
        if model is None or model.backend != Backend.LLAMA_CPP:
            return None
        return model.target
    return None


def _idle_reports(pool: str, exclude: str) -> list[fleet.WorkerReport]:
    """The reports of live workers of ``pool`` that run no answer, ``exclude`` left out, and
    those shutting down (idle because they take nothing new: a wake-up sent to one, or an
    answer left to it, would wait for nothing)."""
    return [
        entry["report"]
        for entry in fleet.fleet()
        if not entry["lost"]
        and not entry["report"].get("draining", False)
        and pool in entry["report"]["pools"]
        and entry["report"]["answers"] == 0
        and node_of(entry["report"]["worker"]) != exclude
    ]


def warm_worker(pool: str, target: str, exclude: str = "") -> str | None:
    """The node name of a live, idle worker of ``pool`` to run ``target``: one that has it
    loaded; else one that has nothing loaded (so no other model is given up for it)."""
    idle = _idle_reports(pool, exclude)
    for wanted in (lambda models: target in models, lambda models: not models):
        nodes = sorted(node_of(report["worker"]) for report in idle if wanted(report["models"]))
        if nodes:
            return nodes[0]
    return None


def loaded_elsewhere(pool: str, target: str, exclude: str) -> bool:
    """Whether another live, idle worker of ``pool`` has ``target`` loaded: an idle worker
    that lacks it leaves the answer to that one (which its wake-up went to) rather than
    load a second copy."""
    return any(target in report["models"] for report in _idle_reports(pool, exclude))


def wake_target(pool: str, pool_queue: str, exclude: str = "") -> str:
    """The queue a wake-up for ``pool`` should go to."""
    target = next_model_target(pool)
    node = warm_worker(pool, target, exclude) if target else None
    return direct_queue(node) if node else pool_queue
