"""Access checks for views."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse

from webui.accounts.selectors import is_admin


def admin_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Admin pages and actions: anyone else gets a 404, as if the page did not exist
    (no redirect to a login page that would confirm it does)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_admin(request.user):
            raise Http404("No such page")
        return view(request, *args, **kwargs)

    return wrapped
