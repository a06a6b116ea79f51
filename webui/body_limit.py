"""A cap on every HTTP request body, applied before Django reads it.

Django's ASGI handler spools a whole body (to a temporary file once it is over
FILE_UPLOAD_MAX_MEMORY_SIZE) before any view runs, and DATA_UPLOAD_MAX_MEMORY_SIZE does
not cover files: without a cap, one POST of any size, from anyone, fills the disk before a
view can look at its size. Corral's largest legitimate body is one chunk of a model upload
or one conversation file (``config.MAX_REQUEST_BYTES``); views keep their own, tighter
limits.
"""

from __future__ import annotations

from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, Scope

ASGIApp = Any  # Django's and Channels' applications, called as app(scope, receive, send)

# A refused body up to this much over the cap is read and dropped before the 413 goes out:
# a server that answers and closes with the body unread resets the connection, and a
# browser then shows a network error instead of the answer. Bigger ones are not read.
DRAIN_BYTES = 64 * 1024 * 1024


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: ASGIReceiveCallable) -> None:
    while True:
        message: Any = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: ASGISendCallable) -> None:
        body = f"The request body is larger than {self.max_bytes:,} bytes.\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
                "trailers": False,
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= self.max_bytes + DRAIN_BYTES:
                await _drain(receive)
            await self._refuse(send)  # nothing of it stored
            return
        received = 0
        refused = False
        responding = False

        async def limited_receive() -> Any:
            # A body without a declared length (chunked) is counted as it arrives.
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not responding:
                        await self._refuse(send)
                    # Django stops reading at a disconnect and answers nothing itself.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal responding
            if refused:
                return
            if message["type"] == "http.response.start":
                responding = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
