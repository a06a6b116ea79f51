"""HTTP edge of conversation management: search, rename, pin, archive, delete, export,
import and share links. Thin: parse the request, call one function, render or redirect."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webui.chat import conversations, exports, search, selectors, sharing
from webui.chat.models import Conversation, SharedLink


def _owned_or_404(request: HttpRequest, conversation_id: int) -> Conversation:
    conversation = selectors.get_conversation_for(request.user, conversation_id)
    if conversation is None:
        raise Http404("No such conversation")
    return conversation


def _back(conversation_id: int) -> HttpResponse:
    return redirect("chat:conversation", conversation_id=conversation_id)


def _flag(request: HttpRequest, name: str) -> bool:
    return request.POST.get(name) == "1"


@require_GET
def search_page(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "")[:500]
    hits = search.search_conversations(request.user, query) if query.strip() else []
    return render(
        request,
        "chat/search.html",
        {
            "q": query,
            "hits": hits,
            "limit": search.DEFAULT_LIMIT,
            "conversations": conversations.sidebar_page(request.user),
        },
    )


@require_POST
def rename(request: HttpRequest, conversation_id: int) -> HttpResponse:
    try:
        conversations.rename(request.user, conversation_id, request.POST.get("title", ""))
    except Conversation.DoesNotExist:
        raise Http404("No such conversation") from None
    except ValidationError as exc:
        conversation = _owned_or_404(request, conversation_id)
        return render(
            request,
            "chat/action_error.html",
            {"conversation": conversation, "error": " ".join(exc.messages)},
            status=400,
        )
    return _back(conversation_id)


@require_POST
def pin(request: HttpRequest, conversation_id: int) -> HttpResponse:
    try:
        conversations.set_pinned(request.user, conversation_id, _flag(request, "pinned"))
    except Conversation.DoesNotExist:
        raise Http404("No such conversation") from None
    return _back(conversation_id)


@require_POST
def archive(request: HttpRequest, conversation_id: int) -> HttpResponse:
    try:
        conversations.set_archived(request.user, conversation_id, _flag(request, "archived"))
    except Conversation.DoesNotExist:
        raise Http404("No such conversation") from None
    return _back(conversation_id)


@require_http_methods(["GET", "POST"])
def delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """GET asks for confirmation (no JavaScript confirm: the CSP forbids inline script);
    POST deletes."""
    conversation = _owned_or_404(request, conversation_id)
    if request.method == "GET":
        return render(request, "chat/delete_confirm.html", {"conversation": conversation})
    try:
        conversations.delete_conversation(request.user, conversation_id)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation") from None
    return redirect("chat:home")


def _attachment(content: str, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response.headers["Content-Disposition"] = content_disposition_header(True, filename)
    return response


@require_GET
def export_markdown(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _owned_or_404(request, conversation_id)
    return _attachment(
        exports.export_markdown(conversation),
        "text/markdown; charset=utf-8",
        exports.export_filename(conversation, "md"),
    )


@require_GET
def export_json(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _owned_or_404(request, conversation_id)
    return _attachment(
        exports.export_json(conversation),
        "application/json; charset=utf-8",
        exports.export_filename(conversation, "json"),
    )


@require_http_methods(["GET", "POST"])
def import_page(request: HttpRequest) -> HttpResponse:
    context = {"max_bytes": exports.max_import_bytes(), "errors": []}
    if request.method == "GET":
        return render(request, "chat/import.html", context)
    upload = request.FILES.get("file")
    if upload is None:
        context["errors"] = ["Choose a conversation file (.json) to import."]
        return render(request, "chat/import.html", context, status=400)
    if upload.size is not None and upload.size > context["max_bytes"]:
        # Before reading it: the size alone refuses it.
        context["errors"] = [
            f"The file is larger than the limit of {context['max_bytes']:,} bytes."
        ]
        return render(request, "chat/import.html", context, status=400)
    try:
        conversation = exports.import_conversation(
            request.user, upload.read(context["max_bytes"] + 1)
        )
    except exports.ImportRejected as exc:
        context["errors"] = exc.errors
        return render(request, "chat/import.html", context, status=exc.status)
    return _back(conversation.pk)


@require_http_methods(["GET", "POST"])
def share(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """The conversation's active links (GET); a new one (POST)."""
    conversation = _owned_or_404(request, conversation_id)
    if request.method == "POST":
        sharing.create_link(request.user, conversation_id)
        return redirect("conversations:share", conversation_id=conversation_id)
    links = [
        (link, request.build_absolute_uri(reverse("conversations:shared", args=[link.token])))
        for link in sharing.active_links(request.user, conversation_id)
    ]
    return render(request, "chat/share.html", {"conversation": conversation, "links": links})


@require_POST
def revoke(request: HttpRequest, conversation_id: int, link_id: int) -> HttpResponse:
    try:
        sharing.revoke_link(request.user, conversation_id, link_id)
    except SharedLink.DoesNotExist:
        raise Http404("No such link") from None
    return redirect("conversations:share", conversation_id=conversation_id)


@login_not_required
@never_cache
@require_GET
def shared(request: HttpRequest, token: str) -> HttpResponse:
    """The public, read-only page of a share link."""
    view = sharing.shared_conversation(token)
    if view is None:
        raise Http404("No such link")
    response = render(request, "chat/shared.html", {"shared": view})
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
