"""Model jobs: claimed once, cancelled, reported, failed when their worker is lost, and a
quantization run by the real runner on a real (tiny) GGUF."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from inference.quantize import QuantizeCancelled, quantize_gguf
from tests.hf_models import tiny_llama_gguf, write_tiny_hf_llama
from webui import config
from webui.chat.models import LanguageModel
from webui.library import actions, jobs
from webui.library.models import JobKind, JobState, ModelJob

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def f16_model(models_dir) -> LanguageModel:
    """A tiny random Llama converted to F16 and registered, as an admin would have it."""
    from webui.chat.model_library import register_gguf

    path = tiny_llama_gguf(models_dir, "tiny-f16.gguf")
    return register_gguf(name="tiny", relative_path=path.name, pool="cpu")


def _job(kind=JobKind.QUANTIZE, **params) -> ModelJob:
    return ModelJob.objects.create(kind=kind, title="t", params=params)


def test_a_job_is_claimed_once():
    job = _job()
    assert jobs.claim(job.pk, "w1") is not None
    assert jobs.claim(job.pk, "w2") is None
    job.refresh_from_db()
    assert (job.state, job.worker) == (JobState.RUNNING, "w1")


def test_cancelling_a_queued_job_ends_it_and_no_worker_runs_it():
    job = _job()
    jobs.cancel(job)
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED and job.finished_at is not None
    assert jobs.claim(job.pk, "w") is None


def test_cancelling_a_running_job_reaches_its_runner():
    job = _job()
    jobs.claim(job.pk, "w")
    progress = jobs.JobProgress(job.pk)
    assert not progress.should_stop()
    jobs.cancel(job)
    later = jobs.JobProgress(job.pk)  # a fresh one: the first polls at most twice a second
    assert later.should_stop()
    with pytest.raises(jobs.JobCancelled):
        later.check()


def test_progress_reaches_the_row_every_admin_reads():
    job = _job()
    jobs.claim(job.pk, "w")
    now = [0.0]
    progress = jobs.JobProgress(job.pk, clock=lambda: now[0])
    progress(0.25, "pulling abc")
    job.refresh_from_db()
    assert (job.progress, job.status) == (0.25, "pulling abc")
    progress(0.3, "pulling abc")  # same status within half a second: not written
    job.refresh_from_db()
    assert job.progress == 0.25
    now[0] = 1.0
    progress(0.5, "pulling abc")
    job.refresh_from_db()
    assert job.progress == 0.5
    assert jobs.describe(job)["progress"] == 0.5


def test_a_running_job_whose_worker_stopped_beating_is_failed():
    job = _job()
    jobs.claim(job.pk, "w")
    fresh = _job()
    jobs.claim(fresh.pk, "w")
    ModelJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=config.MODEL_JOB_STALE_S + 5)
    )
    assert jobs.fail_lost_jobs() == 1
    job.refresh_from_db()
    fresh.refresh_from_db()
    assert job.state == JobState.FAILED and job.error == jobs.WORKER_LOST
    assert fresh.state == JobState.RUNNING


def test_quantizing_makes_a_registered_model_with_its_size_and_speed(f16_model, admin):
    job = actions.start_quantize(admin, source_id=f16_model.pk, target_type="Q8_0", name="tiny-q8")
    jobs.run_job(job.pk, "test-worker")
    job.refresh_from_db()
    assert job.state == JobState.DONE, job.error
    made = LanguageModel.objects.get(name="tiny-q8")
    assert job.result_model == made
    assert made.details["quantization"] == "Q8_0"
    path = Path(made.target)
    assert path.parent == config.MODELS_DIR and path.is_file()
    assert job.result["size_bytes"] == path.stat().st_size < job.result["source_size_bytes"]
    assert job.result["tokens_per_second"] > 0 and job.result["source_tokens_per_second"] > 0
    assert made.pool == f16_model.pool and "Q8_0" in jobs.describe(job)["summary"]


def test_a_quantization_that_is_stopped_leaves_no_file(f16_model, models_dir):
    before = sorted(p.name for p in models_dir.iterdir())
    with pytest.raises(QuantizeCancelled):
        quantize_gguf(
            Path(f16_model.target), models_dir / "out.gguf", "Q8_0", should_stop=lambda: True
        )
    assert sorted(p.name for p in models_dir.iterdir()) == before


@pytest.mark.parametrize(
    ("target_type", "name", "message"),
    [
        ("Q2_K", "x", "Choose one of"),
        ("Q8_0", "", "Give the new model a name"),
        ("Q8_0", "tiny", "exists already"),
    ],
)
def test_a_refused_quantization_saves_nothing(f16_model, admin, target_type, name, message):
    with pytest.raises(actions.ActionError, match=message):
        actions.start_quantize(admin, source_id=f16_model.pk, target_type=target_type, name=name)
    assert not ModelJob.objects.exists()


def test_an_already_quantized_model_is_not_offered(gemma, admin):
    assert gemma not in actions.quantizable_models()
    with pytest.raises(actions.ActionError, match="F32, F16 or Q8_0"):
        actions.start_quantize(admin, source_id=gemma.pk, target_type="Q8_0", name="g8")


def test_converting_then_quantizing_gives_two_models_that_generate(models_dir, admin):
    write_tiny_hf_llama(models_dir / "hf" / "tiny")
    job = actions.start_convert(admin, folder="hf/tiny", name="tiny", quantize="Q8_0")
    jobs.run_job(job.pk, "test-worker")
    job.refresh_from_db()
    assert job.state == JobState.DONE, job.error
    follow = ModelJob.objects.get(pk=job.result["quantize_job"])
    jobs.run_job(follow.pk, "test-worker")
    follow.refresh_from_db()
    assert follow.state == JobState.DONE, follow.error
    converted, quantized = LanguageModel.objects.get(name="tiny"), follow.result_model
    assert converted.details["quantization"] == "F16"
    assert quantized.details["quantization"] == "Q8_0"
    from llama_cpp import Llama

    llm = Llama(model_path=quantized.target, n_ctx=64, verbose=False)
    out = llm.create_completion("hello", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 4


def test_a_folder_outside_the_models_folder_is_refused(models_dir, admin, tmp_path):
    outside = write_tiny_hf_llama(tmp_path / "elsewhere")
    (models_dir / "link").symlink_to(outside)
    for folder in ("../elsewhere", str(outside), "link"):
        with pytest.raises(
            actions.ActionError, match="outside the models folder|inside the models"
        ):
            actions.start_convert(admin, folder=folder, name="x")
    assert not ModelJob.objects.exists()


def test_a_q8_0_model_quantizes_further(f16_model, admin):
    first = actions.start_quantize(admin, source_id=f16_model.pk, target_type="Q8_0", name="t8")
    jobs.run_job(first.pk, "w")
    q8 = LanguageModel.objects.get(name="t8")
    assert q8 in actions.quantizable_models()
    second = actions.start_quantize(admin, source_id=q8.pk, target_type="Q4_K_M", name="t4")
    jobs.run_job(second.pk, "w")
    second.refresh_from_db()
    assert second.state == JobState.DONE, second.error
    assert second.result["size_bytes"] < second.result["source_size_bytes"]


def test_a_job_the_reaper_gave_up_on_stops_its_runner():
    job = _job()
    jobs.claim(job.pk, "w")
    progress = jobs.JobProgress(job.pk)
    ModelJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=config.MODEL_JOB_STALE_S + 5)
    )
    jobs.fail_lost_jobs()
    assert progress.should_stop()


def test_a_job_whose_message_was_lost_is_sent_again_once():
    import redis

    client = redis.Redis.from_url(config.redis_url())
    client.delete(config.MODEL_JOB_QUEUE)
    fresh, old = _job(), _job()
    ModelJob.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(seconds=jobs.RESEND_AFTER_S + 5)
    )
    try:
        assert jobs.resend_waiting_jobs() == [old.pk]
        assert client.llen(config.MODEL_JOB_QUEUE) == 1  # a real message on the queue
        assert jobs.resend_waiting_jobs() == []  # one waits already: no pile-up
    finally:
        client.delete(config.MODEL_JOB_QUEUE)
    assert fresh.pk not in jobs.resend_waiting_jobs()
