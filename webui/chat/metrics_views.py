"""``/metrics`` for Prometheus: an admin's session or the configured bearer token, never
anonymous."""

from __future__ import annotations

import hmac

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from webui import config
from webui.accounts.selectors import is_admin
from webui.chat import metrics


def _has_token(request: HttpRequest) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = config.METRICS_TOKEN
    return (
        bool(expected)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(token.encode(), expected.encode())
    )


@login_not_required  # a scraper has no session: it brings the token
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if is_admin(request.user) or _has_token(request):
        return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    if request.user.is_authenticated:
        return HttpResponse("Metrics are for admins.", status=403, content_type="text/plain")
    refused = HttpResponse(
        "Metrics need an admin's session or the metrics token.",
        status=401,
        content_type="text/plain",
    )
    refused["WWW-Authenticate"] = 'Bearer realm="corral"'
    return refused
