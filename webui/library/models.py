from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from webui.chat.models import LanguageModel


class JobKind(models.TextChoices):
    INSTALL_DEFAULT = "install_default", "Add the packaged model"
    QUANTIZE = "quantize", "Quantize"
    CONVERT = "convert", "Convert"
    PULL = "pull", "Pull"
    SHOW = "show", "Show"
    COPY = "copy", "Copy"
    DELETE = "delete", "Delete"


class JobState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATES = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class ModelJob(models.Model):
    """A model-management job run by a worker of the ``models`` queue. The row is the
    truth every admin's page shows: a refresh or another admin sees the same progress."""

    kind = models.CharField(max_length=20, choices=JobKind.choices)
    state = models.CharField(max_length=10, choices=JobState.choices, default=JobState.QUEUED)
    # What to do (ids and choices, never paths an admin typed): see webui.library.runners.
    params = models.JSONField(default=dict)
    title = models.CharField(max_length=300)  # what the jobs list calls it
    progress = models.FloatField(null=True, blank=True)  # 0..1 when known
    status = models.CharField(max_length=300, blank=True)  # the runner's latest words
    error = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)  # sizes, tok/s, Ollama details
    result_model = models.ForeignKey(
        LanguageModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Written with every progress report: a running job whose worker died goes stale.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.title} ({self.state})"


class UploadState(models.TextChoices):
    RECEIVING = "receiving"
    DONE = "done"
    FAILED = "failed"


class ModelUpload(models.Model):
    """A GGUF arriving in chunks from an admin's browser. Its bytes go to a file named by
    the upload's id, never by the browser, and each chunk must start where the file ends,
    so a dropped connection or a reloaded page resumes where it stopped."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    filename = models.CharField(max_length=255)  # as the browser named it: shown, never used
    size = models.BigIntegerField()  # declared, checked against the cap before any byte
    received = models.BigIntegerField(default=0)
    state = models.CharField(
        max_length=10, choices=UploadState.choices, default=UploadState.RECEIVING
    )
    sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    model = models.ForeignKey(
        LanguageModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.filename} ({self.state})"


class OllamaServer(models.Model):
    """An Ollama server admins added; its models are served from it."""

    name = models.CharField(max_length=100, unique=True)
    base_url = models.CharField(max_length=500, unique=True)
    healthy = models.BooleanField(default=False)
    checked_at = models.DateTimeField(null=True, blank=True)
    version = models.CharField(max_length=50, blank=True)
    # Shown to admins only: a server's own words can say anything.
    last_error = models.TextField(blank=True)
    # What /api/tags listed at the last check (names, sizes, families).
    remote_models = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
