"""What a browser may send over the conversation socket: one pydantic model per message
type, validated before any work is done. Anything else is refused with a short error
that never echoes the input back."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

RequestId = Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Id = Annotated[int, Field(ge=1, le=2**63 - 1)]


class _ClientMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Send(_ClientMessage):
    type: Literal["send"]
    text: str
    model: Id | None = None
    request: RequestId | None = None


class Stop(_ClientMessage):
    type: Literal["stop"]
    message: Id


class Sync(_ClientMessage):
    type: Literal["sync"]


class Regenerate(_ClientMessage):
    type: Literal["regenerate"]
    message: Id
    model: Id | None = None


class Edit(_ClientMessage):
    type: Literal["edit"]
    message: Id
    text: str
    model: Id | None = None
    request: RequestId | None = None


class Version(_ClientMessage):
    type: Literal["version"]
    message: Id


ClientMessage = Annotated[
    Send | Stop | Sync | Regenerate | Edit | Version, Field(discriminator="type")
]
_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


class BadClientMessage(ValueError):
    """The message is not one the protocol knows; ``str()`` is safe to show."""


def parse(raw: object) -> Send | Stop | Sync | Regenerate | Edit | Version:
    # An empty model choice ("") means "the default model".
    if isinstance(raw, dict) and raw.get("model") == "":
        raw = {**raw, "model": None}
    try:
        return _adapter.validate_python(raw)
    except PydanticValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'message'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)[:3]
        ]
        detail = "; ".join(problems)[:300]
        raise BadClientMessage(f"Message not understood ({detail}).") from None
