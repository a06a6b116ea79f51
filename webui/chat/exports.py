"""Export a conversation (Markdown for reading, JSON for keeping) and import the JSON back.

The JSON holds the whole message tree (ids and parent ids), so every version of every
answer survives a round trip. Imports are validated with pydantic (unknown keys are an
error, sizes are capped) before anything is written, and written in one transaction: a bad
file creates nothing.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from inference import SamplingOptions
from webui import config
from webui.chat import selectors
from webui.chat.conversation_settings import validate_parameters
from webui.chat.models import (
    Conversation,
    ConversationImport,
    Message,
    TitleStatus,
    storable_text,
)

FORMAT = "corral.conversation"
VERSION = 1
MAX_IMPORT_MESSAGES = 5000
# Answers are not bound by the limit on what people type; allow them twice as much.
ANSWER_CHARS_FACTOR = 2
TITLE_CHARS = 60  # a title made from the first question, as for a new chat

# Text as it can be saved (``storable_text``).
Text = Annotated[str, AfterValidator(storable_text)]


class ImportRejected(ValueError):
    """The file cannot be imported; ``errors`` says why, in words for the person."""

    def __init__(self, errors: list[str], status: int = 400) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors
        self.status = status


def max_import_bytes() -> int:
    return int(settings.CORRAL.get("MAX_IMPORT_BYTES", config.MAX_IMPORT_BYTES))


def max_imports_per_hour() -> int:
    return int(settings.CORRAL.get("MAX_IMPORTS_PER_HOUR", config.MAX_IMPORTS_PER_HOUR))


def _check_import_rate(user: AbstractBaseUser) -> None:
    """At most ``max_imports_per_hour`` imports in any hour (0: imports are off):
    each writes up to MAX_IMPORT_MESSAGES rows, so unbounded imports would fill the
    database."""
    limit = max_imports_per_hour()
    if limit <= 0:
        raise ImportRejected(["Importing conversations is turned off on this server."], 403)
    now = timezone.now()
    recent = list(
        ConversationImport.objects.filter(owner=user, created_at__gte=now - timedelta(hours=1))
        .order_by("-created_at")
        .values_list("created_at", flat=True)[:limit]
    )
    if len(recent) >= limit:
        # The limit-th newest import leaves the hour first among those that count.
        frees_at = recent[limit - 1] + timedelta(hours=1)
        wait = max(1, math.ceil((frees_at - now).total_seconds() / 60))
        raise ImportRejected(
            [f"You imported {limit} conversations in the last hour; try again in {wait} min."],
            status=429,
        )


def _max_message_chars() -> int:
    return int(settings.CORRAL.get("MAX_MESSAGE_CHARS", config.MAX_MESSAGE_CHARS))


# Export --------------------------------------------------------------------------------


def export_filename(conversation: Conversation, extension: str) -> str:
    """A file name safe in any header and on any file system: ASCII slug + id."""
    stem = slugify(conversation.title)[:60].strip("-_") or "conversation"
    return f"{stem}-{conversation.pk}.{extension}"


def _model_name(message: Message, conversation: Conversation) -> str:
    if message.model_id and message.model:
        return message.model.name
    if conversation.model_id and conversation.model:
        return conversation.model.name
    return "Assistant"


def export_markdown(conversation: Conversation) -> str:
    """The branch on screen, as a readable Markdown document."""
    branch, _ = selectors.current_branch(conversation)
    lines = [f"# {' '.join(str(conversation).split())}", ""]
    if conversation.system_prompt:
        lines += ["## System prompt", "", conversation.system_prompt, ""]
    for message in branch:
        if message.role == Message.Role.USER:
            heading = "You"
        elif message.role == Message.Role.SYSTEM:
            heading = "System"
        else:
            heading = _model_name(message, conversation)
        lines += [f"## {heading}", "", message.content or "_(no text)_", ""]
        if message.status != Message.Status.DONE:
            note = message.error or message.get_status_display()
            lines += [f"_({message.status}: {note})_", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def export_data(conversation: Conversation) -> dict[str, Any]:
    """Everything needed to rebuild the conversation: settings and the whole tree."""
    messages = list(conversation.messages.select_related("model").order_by("created_at", "pk"))
    return {
        "format": FORMAT,
        "version": VERSION,
        "title": conversation.title,
        "system_prompt": conversation.system_prompt,
        "parameters": conversation.parameters,
        "created_at": conversation.created_at.isoformat(),
        "model": conversation.model.name if conversation.model_id and conversation.model else None,
        "current_leaf": conversation.current_leaf_id,
        "messages": [
            {
                "id": m.pk,
                "parent_id": m.parent_id,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "created_at": m.created_at.isoformat(),
                "model": m.model.name if m.model_id and m.model else None,
            }
            for m in messages
        ],
    }


def export_json(conversation: Conversation) -> str:
    return json.dumps(export_data(conversation), ensure_ascii=False, indent=2) + "\n"


# Import --------------------------------------------------------------------------------


class ImportedMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int
    parent_id: int | None = None
    role: Literal["user", "assistant", "system"]
    content: Text
    # Accepted for round trips; every imported message is saved as done.
    status: Literal["queued", "running", "done", "failed", "stopped"] = "done"
    created_at: datetime | None = None
    model: Text | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _content_fits(self) -> ImportedMessage:
        limit = _max_message_chars()
        if self.role == "assistant":
            limit *= ANSWER_CHARS_FACTOR
        if len(self.content) > limit:
            raise ValueError(
                f"message {self.id} is {len(self.content):,} characters long; "
                f"the limit is {limit:,}"
            )
        return self


class ImportedConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["corral.conversation"] = FORMAT
    version: Literal[1] = VERSION
    title: Text = Field(default="", max_length=200)
    system_prompt: Text = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    model: Text | None = Field(default=None, max_length=200)
    current_leaf: int | None = None
    messages: list[ImportedMessage] = Field(min_length=1, max_length=MAX_IMPORT_MESSAGES)

    @model_validator(mode="after")
    def _consistent(self) -> ImportedConversation:
        if len(self.system_prompt) > _max_message_chars():
            raise ValueError(
                f"the system prompt is longer than {_max_message_chars():,} characters"
            )
        try:
            SamplingOptions(**self.parameters)
        except PydanticValidationError as exc:
            raise ValueError(f"parameters: {_summary(exc, limit=3)}") from None
        seen: set[int] = set()
        for message in self.messages:
            if message.id in seen:
                raise ValueError(f"message id {message.id} appears twice")
            if message.parent_id is not None and message.parent_id not in seen:
                raise ValueError(
                    f"message {message.id}: parent_id {message.parent_id} is not an "
                    "earlier message of the file"
                )
            seen.add(message.id)
        if self.current_leaf is not None and self.current_leaf not in seen:
            raise ValueError(f"current_leaf {self.current_leaf} is not a message of the file")
        return self


def _summary(exc: PydanticValidationError, limit: int = 5) -> str:
    return "; ".join(_error_lines(exc)[:limit])


def _error_lines(exc: PydanticValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return lines


def parse_import(raw: bytes) -> ImportedConversation:
    """Check the size, then the content; raises ImportRejected with readable reasons."""
    limit = max_import_bytes()
    if len(raw) > limit:
        raise ImportRejected([f"The file is larger than the limit of {limit:,} bytes."])
    try:
        return ImportedConversation.model_validate_json(raw)
    except PydanticValidationError as exc:
        errors = _error_lines(exc)
        if len(errors) > 5:
            errors = [*errors[:5], f"… and {len(errors) - 5} more problems"]
        raise ImportRejected(errors) from None


def import_conversation(user: AbstractBaseUser, raw: bytes) -> Conversation:
    """A new conversation of ``user`` from an exported JSON file, in one transaction.

    Messages are saved as finished (``done``). Models are matched by name among the models
    the person may use; an unknown or unavailable one leaves the model empty.
    """
    _check_import_rate(user)
    data = parse_import(raw)
    names = {data.model} | {m.model for m in data.messages}
    models = {
        model.name: model
        for model in selectors.models_for(user).filter(name__in=[n for n in names if n])
    }
    title, title_status = " ".join(data.title.split()), TitleStatus.USER
    if not title:
        first = next((m.content for m in data.messages if m.role == "user"), "")
        title, title_status = " ".join(first.split())[:TITLE_CHARS], TitleStatus.PROVISIONAL
    model = models.get(data.model or "")
    try:  # the same checks as the settings panel (seed range, no stop lists, token cap)
        parameters = validate_parameters(data.parameters, model)
    except ValidationError as exc:
        raise ImportRejected([f"parameters: {m}" for m in exc.messages]) from None
    with transaction.atomic():
        conversation = Conversation.objects.create(
            owner=user,
            title=title,
            title_status=title_status,
            system_prompt=data.system_prompt,
            parameters=parameters,
            model=model,
        )
        ConversationImport.objects.create(owner=user, conversation=conversation)
        rows = [
            Message(
                conversation=conversation,
                role=m.role,
                content=m.content,
                status=Message.Status.DONE,
                model=models.get(m.model or "") if m.role == "assistant" else None,
                finished_at=timezone.now(),
            )
            for m in data.messages
        ]
        Message.objects.bulk_create(rows, batch_size=500)
        new_ids = {m.id: row.pk for m, row in zip(data.messages, rows, strict=True)}
        children = []
        for m, row in zip(data.messages, rows, strict=True):
            if m.parent_id is not None:
                row.parent_id = new_ids[m.parent_id]
                children.append(row)
        Message.objects.bulk_update(children, ["parent"], batch_size=500)
        leaf = data.current_leaf if data.current_leaf is not None else data.messages[-1].id
        conversation.current_leaf_id = new_ids[leaf]
        conversation.save(update_fields=["current_leaf"])
    return conversation
