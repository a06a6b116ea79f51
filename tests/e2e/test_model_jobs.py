"""Model jobs through the real queue: a Celery worker consuming `models` converts and
quantizes a tiny Llama an admin asked for, and pulls an Ollama model that a real `cpu`
worker then answers with, on the server that is up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import _stop, start_worker
from tests.hf_models import write_tiny_hf_llama
from tests.ollama_server import OllamaTestServer, PullableModel, ScriptedModel
from webui import config
from webui.chat import services
from webui.chat.models import LanguageModel, Message
from webui.library import ollama_servers
from webui.library.models import JobState, ModelJob

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def shared_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("library-models")


@pytest.fixture(scope="module")
def models_worker(stack_env, shared_models_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("models-worker") / "worker.log"
    env = {**stack_env, "MODELS_DIR": str(shared_models_dir)}
    running = start_worker(env, log, queues=config.MODEL_JOB_QUEUE, label="models")
    yield running
    _stop(running.process)


@pytest.fixture
def models_dir(shared_models_dir, monkeypatch) -> Path:
    monkeypatch.setattr(config, "MODELS_DIR", shared_models_dir)
    return shared_models_dir


def _until_finished(job_id: int, timeout: float = 90) -> ModelJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = ModelJob.objects.get(pk=job_id)
        if job.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {ModelJob.objects.get(pk=job_id).state}")


def test_an_admin_converts_and_quantizes_through_the_models_worker(
    models_worker, models_dir, admin_client
):
    write_tiny_hf_llama(models_dir / "hf" / "tiny-e2e")
    reply = admin_client.post(
        "/manage/library/convert/",
        {"folder": "hf/tiny-e2e", "name": "tiny-e2e", "outtype": "f16", "quantize": "Q8_0"},
    )
    assert reply.status_code == 302
    convert = _until_finished(ModelJob.objects.get(kind="convert").pk)
    assert convert.state == JobState.DONE, convert.error
    quantize = _until_finished(convert.result["quantize_job"])
    assert quantize.state == JobState.DONE, quantize.error
    made = LanguageModel.objects.get(name="tiny-e2e-q8_0")
    assert made.details["quantization"] == "Q8_0" and Path(made.target).parent == models_dir
    page = admin_client.get("/manage/models/").content.decode()
    assert 'data-model="tiny-e2e-q8_0"' in page and "tok/s" in page
    assert quantize.worker.startswith("test-models")


def test_a_pulled_model_answers_from_the_server_that_is_up(
    models_worker, worker, admin, admin_client, alice
):
    pullable = PullableModel(layer_sizes=(2000,), model=ScriptedModel(reply="From the second."))
    with (
        OllamaTestServer(models={"shared:1b": "From the first."}) as first,
        OllamaTestServer(registry={"shared:1b": pullable}) as second,
    ):
        a = ollama_servers.add_server("first", first.url)
        b = ollama_servers.add_server("second", second.url)
        admin_client.post(f"/manage/library/ollama/{b.pk}/pull/", {"model": "shared:1b"})
        pull = _until_finished(ModelJob.objects.get(kind="pull").pk)
        assert pull.state == JobState.DONE, pull.error
        model = LanguageModel.objects.get(name="ollama/shared:1b")
        first.down()
        ollama_servers.check_server(a)
        _, _, answer = services.send_message(
            user=alice, conversation_id=None, text="hello", model_id=model.pk
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer.refresh_from_db()
            if answer.status not in (Message.Status.QUEUED, Message.Status.RUNNING):
                break
            time.sleep(0.2)
    assert answer.status == Message.Status.DONE, answer.error
    assert answer.served_by == b.base_url
    assert answer.content == "From the second."  # the stand-in's scripted reply, not sampled
