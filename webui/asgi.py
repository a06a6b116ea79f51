"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webui.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from webui import config  # noqa: E402
from webui.body_limit import BodySizeLimit  # noqa: E402
from webui.chat.routing import websocket_urlpatterns  # noqa: E402
from webui.origins import SameOriginWebsocketMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": BodySizeLimit(django_asgi_app, config.MAX_REQUEST_BYTES),
        # Whole origins (scheme, host, port), not host names: see webui/origins.py.
        "websocket": SameOriginWebsocketMiddleware(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
