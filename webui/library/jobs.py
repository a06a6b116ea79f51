"""Model jobs: how one is started, claimed, reported on, cancelled and ended.

The database row is the truth. The web side creates it and, after commit, sends its id by
task name to the ``models`` queue; a worker claims it with a conditional update (so a
redelivered task runs nothing twice), runs the kind's runner (``webui.library.runners``)
and records the outcome. Every admin's page reads the same row, so progress survives a
refresh. Cancelling sets a flag the runner polls; a worker that dies leaves a running job
whose heartbeat goes stale, and the reaper fails it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone

from webui import config
from webui.celery import MODEL_JOB_TASK, app
from webui.chat.models import LanguageModel
from webui.library.models import FINISHED_STATES, JobState, ModelJob

logger = logging.getLogger("corral.model_jobs")

# A runner reports often; the row is written at most this often (and on a new status).
PROGRESS_WRITE_INTERVAL_S = 0.5
# Between two looks at the row's cancel flag.
CANCEL_POLL_INTERVAL_S = 0.5
HEARTBEAT_INTERVAL_S = 5.0
WORKER_LOST = "The worker running this job stopped responding."


class JobError(Exception):
    """The job cannot go on; the message is shown to admins as the job's error."""


class JobCancelled(JobError):
    def __init__(self) -> None:
        super().__init__("Cancelled.")


@dataclass
class JobOutcome:
    result: dict[str, Any] = field(default_factory=dict)
    model: LanguageModel | None = None
    status: str = "Done."


def _send(job_id: int) -> None:
    try:
        app.send_task(MODEL_JOB_TASK, args=[job_id], queue=config.MODEL_JOB_QUEUE)
    except Exception:  # broker down: the job stays queued; the reaper sends it again
        logger.warning("could not send model job %s", job_id, exc_info=True)


def start_job(
    *, kind: str, title: str, params: dict[str, Any], user: AbstractBaseUser | None
) -> ModelJob:
    """Save the job and send it to the models queue once the transaction commits."""
    job = ModelJob.objects.create(
        kind=kind, title=title[:300], params=params, created_by=user, status="Waiting for a worker."
    )
    job_id = job.pk
    transaction.on_commit(lambda: _send(job_id))
    return job


# A queued job older than this while the models queue is empty lost its message (the
# broker was down, or Redis lost it): the reaper sends it again (claiming is idempotent).
RESEND_AFTER_S = 30.0


def resend_waiting_jobs() -> list[int]:
    from webui.chat.wakeups import pending_wakeups

    waiting = list(
        ModelJob.objects.filter(
            state=JobState.QUEUED,
            cancel_requested=False,
            created_at__lt=timezone.now() - timedelta(seconds=RESEND_AFTER_S),
        ).values_list("pk", flat=True)
    )
    if not waiting or pending_wakeups(config.MODEL_JOB_QUEUE) > 0:
        return []
    for job_id in waiting:
        _send(job_id)
    return waiting


def worker_alive() -> bool | None:
    """Whether a worker of the models queue noted itself alive; None: Redis cannot say."""
    from webui.chat.wakeups import has_live_worker

    return has_live_worker(config.MODEL_JOB_QUEUE)


def cancel(job: ModelJob) -> None:
    """A queued job ends at once; a running one is told to stop (its runner polls)."""
    now = timezone.now()
    ModelJob.objects.filter(pk=job.pk, state=JobState.QUEUED).update(
        state=JobState.CANCELLED, cancel_requested=True, finished_at=now, status="Cancelled."
    )
    ModelJob.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
        cancel_requested=True, status="Cancelling…"
    )


def claim(job_id: int, worker: str) -> ModelJob | None:
    """Take a queued job; None when it is gone, cancelled, or another worker has it."""
    now = timezone.now()
    taken = ModelJob.objects.filter(
        pk=job_id, state=JobState.QUEUED, cancel_requested=False
    ).update(
        state=JobState.RUNNING, started_at=now, heartbeat_at=now, worker=worker, status="Starting…"
    )
    return ModelJob.objects.get(pk=job_id) if taken else None


class JobProgress:
    """What a runner reports through: ``progress(fraction, status)`` and ``should_stop()``.
    Both are cheap to call in a tight loop; the row is read and written at most twice a
    second."""

    def __init__(self, job_id: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.job_id = job_id
        self._clock = clock
        self._written_at = float("-inf")
        self._status = ""
        self._checked_at = float("-inf")
        self._stop = False

    def __call__(self, fraction: float | None, status: str = "") -> None:
        now = self._clock()
        if status == self._status and now - self._written_at < PROGRESS_WRITE_INTERVAL_S:
            return
        changes: dict[str, Any] = {"heartbeat_at": timezone.now()}
        if fraction is not None:
            changes["progress"] = max(0.0, min(1.0, fraction))
        if status:
            changes["status"] = status[:300]
        ModelJob.objects.filter(pk=self.job_id, state=JobState.RUNNING).update(**changes)
        self._written_at, self._status = now, status

    def should_stop(self) -> bool:
        """Cancel was asked, or the job is no longer running (the reaper gave up on it)."""
        now = self._clock()
        if not self._stop and now - self._checked_at >= CANCEL_POLL_INTERVAL_S:
            self._checked_at = now
            self._stop = (
                ModelJob.objects.filter(pk=self.job_id)
                .filter(Q(cancel_requested=True) | ~Q(state=JobState.RUNNING))
                .exists()
            )
        return self._stop

    def check(self) -> None:
        """Raise :class:`JobCancelled` when an admin asked the job to stop."""
        if self.should_stop():
            raise JobCancelled()


def _end(job_id: int, state: str, **changes: Any) -> None:
    ModelJob.objects.filter(pk=job_id, state=JobState.RUNNING).update(
        state=state, finished_at=timezone.now(), heartbeat_at=timezone.now(), **changes
    )


def _beat_while(job_id: int, done: threading.Event) -> None:
    """Keep a running job's heartbeat fresh during steps that report nothing for long (a
    timing run, a model load)."""
    try:
        while not done.wait(HEARTBEAT_INTERVAL_S):
            try:
                ModelJob.objects.filter(pk=job_id, state=JobState.RUNNING).update(
                    heartbeat_at=timezone.now()
                )
            except Exception:  # the database is away for a moment: beat again next time
                logger.warning("model job %s: heartbeat failed", job_id, exc_info=True)
                close_old_connections()
    finally:
        close_old_connections()


def run_job(job_id: int, worker: str) -> None:
    """Claim and run one job to its end (a worker's task calls this)."""
    from webui.library.runners import runner_for

    job = claim(job_id, worker)
    if job is None:
        return
    progress = JobProgress(job.pk)
    done = threading.Event()
    beat = threading.Thread(target=_beat_while, args=(job.pk, done), daemon=True)
    beat.start()
    try:
        outcome = runner_for(job.kind)(job, progress)
    except JobCancelled:
        _end(job.pk, JobState.CANCELLED, status="Cancelled.")
    except JobError as exc:
        _end(job.pk, JobState.FAILED, error=str(exc), status="Failed.")
    except Exception as exc:
        logger.exception("model job %s failed", job.pk)
        _end(
            job.pk, JobState.FAILED, error=f"Internal error: {type(exc).__name__}", status="Failed."
        )
    else:
        _end(
            job.pk,
            JobState.DONE,
            progress=1.0,
            result=outcome.result,
            result_model=outcome.model,
            status=outcome.status,
        )
    finally:
        done.set()
        beat.join(timeout=1)


def fail_lost_jobs() -> int:
    """Fail running jobs whose worker stopped beating (the reaper calls this)."""
    stale = timezone.now() - timedelta(seconds=config.MODEL_JOB_STALE_S)
    return ModelJob.objects.filter(state=JobState.RUNNING, heartbeat_at__lt=stale).update(
        state=JobState.FAILED, error=WORKER_LOST, status="Failed.", finished_at=timezone.now()
    )


def recent_jobs(limit: int = 50) -> list[ModelJob]:
    """Unfinished jobs first, then the latest finished ones."""
    unfinished = list(
        ModelJob.objects.exclude(state__in=FINISHED_STATES).select_related("created_by")
    )
    finished = ModelJob.objects.filter(state__in=FINISHED_STATES).select_related(
        "created_by", "result_model"
    )[:limit]
    return unfinished + list(finished)


def describe(job: ModelJob) -> dict[str, Any]:
    """A job as the jobs list's JSON shows it."""
    return {
        "id": job.pk,
        "kind": job.kind,
        "kind_label": job.get_kind_display(),
        "title": job.title,
        "state": job.state,
        "progress": job.progress,
        "status": job.status,
        "error": job.error,
        "result": job.result,
        "result_model": job.result_model.name if job.result_model_id and job.result_model else "",
        "summary": summarize(job.result),
        "cancellable": job.state in (JobState.QUEUED, JobState.RUNNING)
        and not job.cancel_requested,
        "created_by": job.created_by.get_username() if job.created_by else "",
        "created_at": job.created_at.isoformat(),
    }


def _size(n: object) -> str:
    return f"{int(n) / 1024**2:.1f} MiB" if isinstance(n, int | float) else "?"


def summarize(result: dict[str, Any]) -> str:
    """A finished job's figures in a line: sizes and tok/s, or what Ollama showed."""
    if "tokens_per_second" in result:
        return (
            f"{result.get('type')}: {_size(result.get('source_size_bytes'))} → "
            f"{_size(result.get('size_bytes'))}; {result.get('source_tokens_per_second')} → "
            f"{result.get('tokens_per_second')} tok/s"
        )
    if "architecture" in result:
        return (
            f"{result.get('architecture') or '?'}, context {result.get('context_length') or '?'}, "
            f"{result.get('quantization') or '?'}, "
            f"chat template: {'yes' if result.get('has_chat_template') else 'no'}"
        )
    if "size_bytes" in result:
        return _size(result["size_bytes"])
    return ""
