"""``{% settings_panel conversation as panel %}``: the settings panel's context, built
where the panel is included so the page's view needs no knowledge of it."""

from __future__ import annotations

from typing import Any

from django import template

from webui.chat import settings_views
from webui.chat.models import Conversation

register = template.Library()


@register.simple_tag(takes_context=True)
def settings_panel(context: template.Context, conversation: Conversation) -> dict[str, Any]:
    return settings_views.panel(context["request"], conversation)
