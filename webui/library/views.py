"""The model library's admin actions and the jobs list. Thin: parse, call one function,
answer. Every view is admin-only (404 for anyone else); changes are POSTs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from django.contrib import messages as flash
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from webui.accounts.decorators import admin_required
from webui.library import actions, jobs, ollama_servers, uploads
from webui.library.models import JobKind, ModelJob, ModelUpload, OllamaServer


def _started(request: HttpRequest, job: ModelJob) -> None:
    flash.success(request, f"Started: {job.get_kind_display()} {job.title}.")


@admin_required
@require_GET
def jobs_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"jobs": [jobs.describe(job) for job in jobs.recent_jobs()]})


@admin_required
@require_POST
def cancel_job(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(ModelJob, pk=job_id)
    jobs.cancel(job)
    if request.headers.get("Accept") == "application/json":
        job.refresh_from_db()
        return JsonResponse(jobs.describe(job))
    flash.success(request, f"Asked {job.title} to stop.")
    return redirect("manage:models")


def _start_from_models_page(request: HttpRequest, start: Callable[[], ModelJob]) -> HttpResponse:
    """Start a job, or say why not; back to the Models page either way."""
    try:
        _started(request, start())
    except actions.ActionError as exc:
        flash.error(request, str(exc))
    return redirect("manage:models")


@admin_required
@require_POST
def install_default(request: HttpRequest) -> HttpResponse:
    return _start_from_models_page(
        request,
        lambda: actions.start_install_default(request.user),  # type: ignore[arg-type]
    )


@admin_required
@require_POST
def quantize(request: HttpRequest) -> HttpResponse:
    source = request.POST.get("source", "")
    return _start_from_models_page(
        request,
        lambda: actions.start_quantize(
            request.user,  # type: ignore[arg-type]
            source_id=int(source) if source.isdigit() else 0,
            target_type=request.POST.get("type", ""),
            name=request.POST.get("name", ""),
        ),
    )


@admin_required
@require_POST
def convert(request: HttpRequest) -> HttpResponse:
    return _start_from_models_page(
        request,
        lambda: actions.start_convert(
            request.user,  # type: ignore[arg-type]
            folder=request.POST.get("folder", ""),
            name=request.POST.get("name", ""),
            outtype=request.POST.get("outtype", "f16"),
            chat_format=request.POST.get("chat_format", ""),
            pool=request.POST.get("pool", "cpu"),
            quantize=request.POST.get("quantize", ""),
        ),
    )


@admin_required
def ollama_page(request: HttpRequest) -> HttpResponse:
    """The Ollama servers: add one (checked at once), see which are up and their models."""
    if request.method == "POST":
        try:
            server = ollama_servers.add_server(
                request.POST.get("name", ""), request.POST.get("base_url", "")
            )
        except ollama_servers.ServerError as exc:
            flash.error(request, str(exc))
        else:
            state = "up" if server.healthy else "down"
            flash.success(request, f"Added {server.name} ({state}).")
        return redirect("library:ollama")
    context = {
        "servers": OllamaServer.objects.all(),
        "jobs": [jobs.describe(job) for job in jobs.recent_jobs()],
        "jobs_worker_alive": jobs.worker_alive(),
    }
    return render(request, "manage/ollama.html", context)


# The model jobs of the Ollama page's per-server buttons.
OLLAMA_JOBS = {
    "pull": JobKind.PULL,
    "show": JobKind.SHOW,
    "copy": JobKind.COPY,
    "delete": JobKind.DELETE,
}


@admin_required
@require_POST
def ollama_action(request: HttpRequest, server_id: int, action: str) -> HttpResponse:
    server = get_object_or_404(OllamaServer, pk=server_id)
    try:
        if action == "check":
            ollama_servers.check_server(server)
            flash.success(request, f"{server.name} is {'up' if server.healthy else 'down'}.")
        elif action == "remove":
            server.delete()
            flash.success(request, f"Removed {server.name}.")
        elif action in OLLAMA_JOBS:
            job = ollama_servers.start_model_job(
                request.user,  # type: ignore[arg-type]
                server,
                OLLAMA_JOBS[action],
                request.POST.get("model", ""),
                request.POST.get("destination", ""),
            )
            _started(request, job)
        else:
            raise Http404("No such action")
    except ollama_servers.ServerError as exc:
        flash.error(request, str(exc))
    return redirect("library:ollama")


def _upload_error(exc: uploads.UploadError) -> JsonResponse:
    return JsonResponse({"error": str(exc), "offset": exc.offset}, status=exc.status)


@admin_required
@require_POST
def upload_start(request: HttpRequest) -> JsonResponse:
    """Declare an upload: {"filename", "size"} → its id and where to send bytes from."""
    try:
        body = json.loads(request.body or b"{}")
        filename, size = str(body.get("filename", "")), int(body.get("size", 0))
    except (ValueError, TypeError, AttributeError):
        return JsonResponse({"error": "Send JSON with a filename and a size."}, status=400)
    try:
        upload = uploads.start_upload(request.user, filename, size)  # type: ignore[arg-type]
    except uploads.UploadError as exc:
        return _upload_error(exc)
    return JsonResponse(uploads.describe(upload), status=201)


@admin_required
def upload_detail(request: HttpRequest, upload_id: uuid.UUID) -> JsonResponse:
    upload = get_object_or_404(ModelUpload, pk=upload_id)
    return JsonResponse(uploads.describe(upload))


@admin_required
@require_POST
def upload_chunk(request: HttpRequest, upload_id: uuid.UUID) -> JsonResponse:
    """Raw bytes that belong at ``?offset=``; read from the stream, never all at once."""
    get_object_or_404(ModelUpload, pk=upload_id)
    try:
        offset = int(request.GET.get("offset", ""))
        length = int(request.headers.get("Content-Length", ""))
    except ValueError:
        return JsonResponse({"error": "Give ?offset= and a Content-Length."}, status=400)
    try:
        upload = uploads.append_chunk(upload_id, offset, length, request.read)
    except uploads.UploadError as exc:
        return _upload_error(exc)
    return JsonResponse(uploads.describe(upload))


@admin_required
@require_POST
def upload_finish(request: HttpRequest, upload_id: uuid.UUID) -> JsonResponse:
    get_object_or_404(ModelUpload, pk=upload_id)
    try:
        upload = uploads.finish_upload(
            upload_id,
            name=request.POST.get("name", ""),
            pool=request.POST.get("pool", "cpu"),
            chat_format=request.POST.get("chat_format", ""),
        )
    except uploads.UploadError as exc:
        return _upload_error(exc)
    return JsonResponse(uploads.describe(upload), status=200 if upload.model_id else 422)


@admin_required
@require_POST
def upload_discard(request: HttpRequest, upload_id: uuid.UUID) -> HttpResponse:
    uploads.discard(get_object_or_404(ModelUpload, pk=upload_id))
    return redirect("manage:models")
