from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models


def storable_text(text: str) -> str:
    """``text`` as a text column can hold it: PostgreSQL's refuse NUL characters (a model
    with a byte-level vocabulary can write one, a JSON string can hold one)."""
    return text.replace("\x00", "")


class Pool(models.TextChoices):
    GPU = "gpu", "GPU"
    CPU = "cpu", "CPU"


class Backend(models.TextChoices):
    LLAMA_CPP = "llama_cpp", "llama.cpp (GGUF)"
    OLLAMA = "ollama", "Ollama"


class LanguageModel(models.Model):
    """A model people can chat with, and where/how it runs."""

    name = models.CharField(max_length=200, unique=True)
    backend = models.CharField(max_length=20, choices=Backend.choices)
    # GGUF path for llama.cpp, model name (e.g. "llama3.2:1b") for Ollama.
    target = models.CharField(max_length=500)
    pool = models.CharField(max_length=10, choices=Pool.choices, default=Pool.CPU)
    # Backend load settings: n_ctx, n_threads, n_gpu_layers, chat_format / host.
    settings = models.JSONField(default=dict, blank=True)
    # Default sampling parameters (inference.SamplingOptions fields).
    parameters = models.JSONField(default=dict, blank=True)
    # Used by conversations that set none of their own.
    system_prompt = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    # What its file says about itself (inference.gguf_info.GgufInfo, for llama.cpp
    # models), read when it was registered.
    details = models.JSONField(default=dict, blank=True)
    # Who may use it: members of these groups, or everyone when there are none.
    groups = models.ManyToManyField(Group, blank=True, related_name="language_models")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TitleStatus(models.TextChoices):
    # The first words of the first question, until a title job replaces them.
    PROVISIONAL = "provisional"
    PENDING = "pending"  # waiting for a worker with nothing else to do
    RUNNING = "running"
    AUTO = "auto"  # written by the model
    USER = "user"  # the person renamed it: never overwritten


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    title_status = models.CharField(
        max_length=12, choices=TitleStatus.choices, default=TitleStatus.PROVISIONAL
    )
    pinned = models.BooleanField(default=False)
    # When a worker took the title job: one left "running" long after was lost.
    title_claimed_at = models.DateTimeField(null=True, blank=True)
    # Hidden from the sidebar, still found by search.
    archived = models.BooleanField(default=False)
    # Sent first in every request of this conversation, when not empty.
    system_prompt = models.TextField(blank=True)
    # Sampling parameters over the model's defaults (inference.SamplingOptions fields).
    parameters = models.JSONField(default=dict, blank=True)
    model = models.ForeignKey(LanguageModel, null=True, blank=True, on_delete=models.SET_NULL)
    # Last message of the branch on screen: regenerating or editing makes a new branch,
    # and the ‹ 1/2 › controls move between branches by moving this.
    current_leaf = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["owner", "-updated_at"]),
            models.Index(fields=["owner", "archived", "-pinned", "-updated_at", "-id"]),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    @property
    def group_name(self) -> str:
        return f"conversation.{self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        STOPPED = "stopped"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    # The message this one follows. Messages sharing a parent and a role are versions
    # of each other (a regenerated answer, an edited question).
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DONE)
    error = models.TextField(blank=True)
    model = models.ForeignKey(LanguageModel, null=True, blank=True, on_delete=models.SET_NULL)
    # Sequence number of the last streamed delta already included in ``content``.
    seq = models.PositiveIntegerField(default=0)
    # How many times a worker claimed this answer; stream keys are scoped to the attempt.
    attempts = models.PositiveSmallIntegerField(default=0)
    # Bumped by every state change; clients drop state events older than what they have.
    version = models.PositiveIntegerField(default=0)
    # Written every few seconds by the worker running the answer; a stale one means lost.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    # For a model on several Ollama servers: the one this answer was sent to.
    served_by = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [
            models.Index(fields=["status"]),
            # The fair order reads the latest starts (webui.chat.queue.queue_of).
            models.Index(fields=["started_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


class ConversationImport(models.Model):
    """One conversation file imported. Kept when the conversation is deleted: the hourly
    import limit counts these, so deleting imports does not make room for more."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["owner", "created_at"])]

    def __str__(self) -> str:
        return f"import by {self.owner_id} at {self.created_at:%Y-%m-%d %H:%M}"


class SharedLink(models.Model):
    """A read-only link to one conversation; revoking it makes the link a 404."""

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="shared_links"
    )
    token = models.CharField(max_length=64, unique=True)
    # The last message of the branch it shares: what the owner writes after the link was
    # made (or on another branch) is not shown. None for a conversation that had none.
    leaf = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Link to conversation {self.conversation_id}"


class AnswerRecord(models.Model):
    """What one answer used, kept when its conversation is deleted. Quotas and usage
    count these rows, so deleting conversations frees no quota and leaves the usage
    history whole. Imported answers were not generated here and have none."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="answer_records"
    )
    answer = models.OneToOneField(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="record"
    )
    model = models.ForeignKey(
        LanguageModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["owner", "created_at"]),
            models.Index(fields=["created_at"]),
        ]

    def __str__(self) -> str:
        return f"Record of answer {self.answer_id}"
