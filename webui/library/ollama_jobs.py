"""The Ollama kinds of model job: pull (with Ollama's streamed progress), show, copy and
delete, each on one of the servers admins added."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from inference import BackendError, ollama_admin
from webui.chat.models import Backend, LanguageModel
from webui.library import ollama_servers
from webui.library.jobs import JobCancelled, JobError, JobOutcome, JobProgress
from webui.library.models import JobKind, ModelJob, OllamaServer
from webui.library.runners import runner


def _server(job: ModelJob) -> tuple[OllamaServer, str]:
    server = OllamaServer.objects.filter(pk=job.params["server"]).first()
    if server is None:
        raise JobError("That Ollama server was removed.")
    try:
        return server, ollama_servers.check_address(server.base_url)
    except ollama_servers.ServerError as exc:
        raise JobError(str(exc)) from None


def library_name(name: str) -> str:
    return f"ollama/{name}"


@runner(JobKind.PULL)
def pull(job: ModelJob, progress: JobProgress) -> JobOutcome:
    server, url = _server(job)
    name = job.params["name"]
    progress(0.0, f"Asking {server.name} for {name}…")

    def report(step: ollama_admin.PullProgress) -> None:
        progress(step.fraction, step.status)

    try:
        ollama_admin.pull(url, name, on_progress=report, should_stop=progress.should_stop)
        details = ollama_admin.show(url, name)
    except ollama_admin.Cancelled:
        raise JobCancelled() from None
    except BackendError as exc:
        raise JobError(str(exc)) from None
    ollama_servers.check_server(server)
    model = LanguageModel.objects.filter(backend=Backend.OLLAMA, target=name).first()
    facts = ollama_servers.details_for_library(details)
    if model is None:
        try:
            with transaction.atomic():
                model = LanguageModel.objects.create(
                    name=library_name(name), backend=Backend.OLLAMA, target=name, details=facts
                )
        except IntegrityError:
            raise JobError(f"A model named {library_name(name)!r} exists already.") from None
    else:
        model.details = facts
        model.save(update_fields=["details"])
    return JobOutcome({"server": server.name, "model": name}, model, f"Pulled {name}.")


@runner(JobKind.SHOW)
def show(job: ModelJob, progress: JobProgress) -> JobOutcome:
    server, url = _server(job)
    try:
        details = ollama_admin.show(url, job.params["name"])
    except BackendError as exc:
        raise JobError(str(exc)) from None
    facts = ollama_servers.details_for_library(details)
    model = LanguageModel.objects.filter(backend=Backend.OLLAMA, target=job.params["name"]).first()
    if model is not None:
        model.details = facts
        model.save(update_fields=["details"])
    result = {**facts, "parameters_text": details.parameters, "capabilities": details.capabilities}
    return JobOutcome(result, model, "Shown.")


@runner(JobKind.COPY)
def copy(job: ModelJob, progress: JobProgress) -> JobOutcome:
    server, url = _server(job)
    try:
        ollama_admin.copy(url, job.params["name"], job.params["destination"])
    except BackendError as exc:
        raise JobError(str(exc)) from None
    ollama_servers.check_server(server)
    return JobOutcome({"server": server.name}, None, f"Copied to {job.params['destination']}.")


@runner(JobKind.DELETE)
def delete(job: ModelJob, progress: JobProgress) -> JobOutcome:
    server, url = _server(job)
    try:
        ollama_admin.delete(url, job.params["name"])
    except BackendError as exc:
        raise JobError(str(exc)) from None
    ollama_servers.check_server(server)
    return JobOutcome({"server": server.name}, None, f"Deleted from {server.name}.")
