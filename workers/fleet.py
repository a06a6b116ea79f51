"""Each worker process that runs answers reports to the fleet (``webui.chat.fleet``): what
it has loaded, how many answers its batch holds, how fast it went since its last report,
and its GPUs. A Celery worker's pool child runs the answers, so the report comes from
there (the main process notes the pools alive: ``workers.presence``)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable

from inference import loaded_models
from webui import config
from webui.chat import fleet
from webui.chat.fleet import GpuReport, WorkerReport
from webui.chat.warm_routing import node_of
from workers import presence
from workers.generation import LIVE_STREAMS

logger = logging.getLogger("corral.fleet")

_started_in_pid: int | None = None
_reporting_as: str | None = None
_lock = threading.Lock()


# nvidia-smi takes a while and lists every GPU of the host: asked at most this often, and
# again when the process loads or drops a model (its memory use changes then).
GPU_QUERY_INTERVAL_S = 30.0
_gpu_cache: tuple[float, tuple[str, ...], list[GpuReport]] | None = None


def gpus(models: Iterable[str] = ()) -> list[GpuReport]:
    """The host's NVIDIA GPUs, as ``nvidia-smi`` last listed them (cached)."""
    global _gpu_cache
    now, loaded = time.monotonic(), tuple(sorted(models))
    if _gpu_cache is None or now - _gpu_cache[0] > GPU_QUERY_INTERVAL_S or loaded != _gpu_cache[1]:
        _gpu_cache = (now, loaded, query_gpus())
    return _gpu_cache[2]


def query_gpus() -> list[GpuReport]:
    """NVIDIA GPUs as ``nvidia-smi`` lists them; none where it is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found: list[GpuReport] = []
    for line in out.strip().splitlines():
        name, total, used = (part.strip() for part in line.rsplit(",", 2))
        if total.isdigit() and used.isdigit():
            found.append(
                {"name": name, "memory_total_mib": int(total), "memory_used_mib": int(used)}
            )
    return found


def current_report(worker: str, pools: list[str], tokens_per_second: float) -> WorkerReport:
    models = loaded_models()
    return {
        "worker": worker,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pools": pools,
        "models": models,
        "answers": LIVE_STREAMS.count,
        "tokens_per_second": round(tokens_per_second, 1),
        "gpus": gpus(models),
        "interval_s": config.REAP_INTERVAL_S,
        # Shutting down: finishing its answers, taking no new ones.
        "draining": presence.draining(node_of(worker)),
    }


def report_forever(worker: str, pools: list[str], stop: threading.Event) -> None:
    interval = config.REAP_INTERVAL_S
    tokens, since = LIVE_STREAMS.tokens, time.monotonic()
    while True:
        now, now_tokens = time.monotonic(), LIVE_STREAMS.tokens
        rate = (now_tokens - tokens) / (now - since) if now > since else 0.0
        tokens, since = now_tokens, now
        try:
            fleet.report(current_report(worker, pools, rate))
        except Exception:  # Redis down: the page cannot show it meanwhile
            logger.warning("could not report worker %s to the fleet", worker, exc_info=True)
        if stop.wait(interval):
            break
    try:
        fleet.forget(worker)
    except Exception:
        logger.warning("could not take worker %s off the fleet", worker, exc_info=True)


def start_reporting(worker: str, pools: Iterable[str], stop: threading.Event) -> bool:
    """Start this process's reports (once per process; a forked child starts its own)."""
    global _started_in_pid, _reporting_as
    with _lock:
        if _started_in_pid == os.getpid():
            return False
        _started_in_pid, _reporting_as = os.getpid(), worker
    threading.Thread(
        target=report_forever,
        args=(worker, sorted(set(pools)), stop),
        name="corral-fleet",
        daemon=True,
    ).start()
    return True


def stop_reporting() -> None:
    """Leave the fleet at once (the reporting thread, told to stop, may not get to it
    before the process exits)."""
    if _reporting_as is not None and _started_in_pid == os.getpid():
        try:
            fleet.forget(_reporting_as)
        except Exception:
            logger.warning("could not take worker %s off the fleet", _reporting_as, exc_info=True)
