"""HTTP edge of the chat: pages, and the form that starts a conversation."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages as flash
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from inference import BackendError
from webui.accounts.decorators import admin_required
from webui.chat import conversations, queue, selectors, services


def _page(
    request: HttpRequest, conversation=None, *, error: str = "", text: str = "", status: int = 200
) -> HttpResponse:
    models = list(selectors.models_for(request.user))
    selected = conversation.model_id if conversation else None
    # A conversation whose model was disabled or restricted since: say so, offer the rest.
    unavailable_model = None
    if conversation and conversation.model and selected not in {m.pk for m in models}:
        unavailable_model, selected = conversation.model, None
    context = {
        "conversation": conversation,
        # The sidebar: one keyset page (?older=<cursor> for the next one).
        "conversations": conversations.sidebar_page(request.user, request.GET.get("older")),
        "models": models,
        "unavailable_model": unavailable_model,
        "selected_model": selected,
        "snapshot": selectors.conversation_snapshot(conversation) if conversation else None,
        "error": error,
        "text": text,
        "max_chars": settings.CORRAL["MAX_MESSAGE_CHARS"],
    }
    return render(request, "chat/chat.html", context, status=status)


def home(request: HttpRequest) -> HttpResponse:
    return _page(request)


def conversation_page(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = selectors.get_conversation_for(request.user, conversation_id)
    if conversation is None:
        raise Http404("No such conversation")
    return _page(request, conversation)


@require_POST
def start_conversation(request: HttpRequest) -> HttpResponse:
    text = request.POST.get("text", "")
    raw_model = request.POST.get("model") or None
    try:
        model_id = int(raw_model) if raw_model else None
        conversation, _, _ = services.send_message(
            user=request.user, conversation_id=None, text=text, model_id=model_id
        )
    except ValueError:
        return _page(request, error="That model is not available.", text=text, status=400)
    except ValidationError as exc:
        return _page(request, error=" ".join(exc.messages), text=text, status=400)
    return redirect("chat:conversation", conversation_id=conversation.pk)


@admin_required
def queue_page(request: HttpRequest) -> HttpResponse:
    """Every pool's running and waiting answers, for admins."""
    return render(request, "chat/queue.html", {"pools": queue.pool_overview()})


@admin_required
@require_POST
def import_ollama_models(request: HttpRequest) -> HttpResponse:
    """Admin button: register every model of the OLLAMA_HOST server."""
    try:
        created = services.import_ollama_models()
    except BackendError as exc:
        flash.error(request, str(exc))
    else:
        flash.success(request, f"Imported {len(created)} new Ollama model(s).")
    return redirect(reverse("admin:chat_languagemodel_changelist"))
