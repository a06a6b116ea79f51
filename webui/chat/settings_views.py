"""HTTP edge of a conversation's settings panel: save the form, and what the panel shows.

The rules live in ``conversation_settings``; this module only reads the form, flashes the
outcome and remembers a refused form so the person does not type it again.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages as flash
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from inference import SamplingOptions
from webui import config
from webui.chat import conversation_settings
from webui.chat.models import Conversation

# Flash messages of this panel carry this tag, so the panel shows only its own.
FLASH_TAG = "settings"
# A refused form, kept for the next render of the same conversation's panel.
DRAFT_KEY = "corral.settings_draft"


@require_POST
def save_settings(request: HttpRequest, conversation_id: int) -> HttpResponse:
    system_prompt = request.POST.get("system_prompt", "")
    parameters = {name: request.POST.get(name, "") for name in conversation_settings.EDITABLE}
    try:
        conversation_settings.update_settings(
            user=request.user,
            conversation_id=conversation_id,
            system_prompt=system_prompt,
            parameters=parameters,
        )
    except Conversation.DoesNotExist:
        raise Http404("No such conversation") from None
    except ValidationError as exc:
        request.session[DRAFT_KEY] = {
            "conversation": conversation_id,
            "system_prompt": system_prompt,
            "parameters": parameters,
        }
        flash.error(request, " ".join(exc.messages), extra_tags=FLASH_TAG)
    else:
        request.session.pop(DRAFT_KEY, None)
        flash.success(
            request, "Settings saved; they apply from the next answer.", extra_tags=FLASH_TAG
        )
    return redirect("chat:conversation", conversation_id=conversation_id)


def panel(request: HttpRequest, conversation: Conversation) -> dict[str, Any]:
    """The panel's context: each field with the conversation's value (or the refused
    form's) and the model's default as placeholder, plus this panel's flash messages."""
    draft = request.session.get(DRAFT_KEY)
    if draft and draft.get("conversation") == conversation.pk:
        request.session.pop(DRAFT_KEY)
    else:
        draft = None
    effective = conversation_settings.effective_settings(conversation)
    fields = []
    for name in conversation_settings.EDITABLE:
        item = effective[name]
        value = "" if item["is_default"] else item["value"]
        if draft is not None:
            value = draft["parameters"].get(name, "")
        default = item["default"]
        fields.append(
            {
                "name": name,
                "id": f"settings-{name.replace('_', '-')}",
                "label": item["label"],
                "value": value,
                "placeholder": "random" if default is None else default,
                **_limits(name),
            }
        )
    notes = [m for m in flash.get_messages(request) if FLASH_TAG in m.tags.split()]
    return {
        "system_prompt": (
            draft["system_prompt"] if draft is not None else effective["system_prompt"]["value"]
        ),
        "fields": fields,
        "messages": notes,
        "open": bool(notes) or draft is not None,
    }


def _limits(name: str) -> dict[str, Any]:
    """min/max/step for the number input, from SamplingOptions' own constraints (the
    server checks again; these only help the browser say so early)."""
    field = SamplingOptions.model_fields[name]
    limits: dict[str, Any] = {"step": "1" if name in ("top_k", "max_tokens", "seed") else "any"}
    for rule in field.metadata:
        if hasattr(rule, "ge"):
            limits["min"] = rule.ge
        if hasattr(rule, "le"):
            limits["max"] = rule.le
    if name == "max_tokens":
        limits["max"] = min(
            limits.get("max", config.MAX_TOKENS_PER_ANSWER), config.MAX_TOKENS_PER_ANSWER
        )
    if name == "seed":
        limits.update(min=0, max=conversation_settings.SEED_MAX)
    return limits
