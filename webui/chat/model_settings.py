"""Per-model settings admins change in the app: its name and pool, how llama.cpp loads it,
how it samples by default, and the system prompt of conversations that set none.

Values are checked with the same pydantic models the backends use (``LlamaCppSettings``,
``SamplingOptions``), so a value saved here is one a worker accepts. An empty field means
"the default" and is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction
from pydantic import ValidationError

from inference import SamplingOptions
from inference.llama_cpp import LlamaCppSettings
from webui import config
from webui.chat.model_library import CHAT_FORMATS
from webui.chat.models import Backend, LanguageModel, Pool

LOAD_FIELDS = ("n_ctx", "n_gpu_layers", "batch_size")  # llama.cpp, whole numbers
SAMPLING_FIELDS: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "max_tokens": int,
    "repeat_penalty": float,
}


class ModelSettingsError(ValueError):
    """A value was refused; the message names it and says why."""


def _number(field: str, raw: str, kind: type) -> int | float:
    try:
        return int(raw) if kind is int else float(raw)
    except ValueError:
        whole = "a whole number" if kind is int else "a number"
        raise ModelSettingsError(f"{field} must be {whole}, not {raw!r}.") from None


def _refusal(exc: ValidationError) -> ModelSettingsError:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "value"
    return ModelSettingsError(f"{field}: {error['msg']}.")


def update_model_settings(model: LanguageModel, data: Mapping[str, str]) -> LanguageModel:
    """Apply a form's values to ``model`` and save it, or raise ModelSettingsError with
    nothing saved."""
    name = data.get("name", "").strip()
    if not name:
        raise ModelSettingsError("Give the model a name.")
    pool = data.get("pool", model.pool)
    if pool not in Pool.values:
        raise ModelSettingsError(f"Pool must be one of: {', '.join(Pool.values)}.")

    settings: dict[str, Any] = dict(model.settings)
    if model.backend == Backend.LLAMA_CPP:
        for field in LOAD_FIELDS:
            raw = data.get(field, "").strip()
            if raw:
                settings[field] = _number(field, raw, int)
            else:
                settings.pop(field, None)
        chat_format = data.get("chat_format", "").strip()
        if chat_format and chat_format not in CHAT_FORMATS:
            raise ModelSettingsError(f"Chat format must be one of: {', '.join(CHAT_FORMATS)}.")
        if chat_format:
            settings["chat_format"] = chat_format
        else:
            settings.pop("chat_format", None)
        try:
            LlamaCppSettings.model_validate(settings)
        except ValidationError as exc:
            raise _refusal(exc) from None

    parameters: dict[str, Any] = dict(model.parameters)
    for field, kind in SAMPLING_FIELDS.items():
        raw = data.get(field, "").strip()
        if raw:
            parameters[field] = _number(field, raw, kind)
        else:
            parameters.pop(field, None)
    try:
        SamplingOptions(**parameters)
    except ValidationError as exc:
        raise _refusal(exc) from None

    system_prompt = data.get("system_prompt", "")
    if len(system_prompt) > config.MAX_MESSAGE_CHARS:
        raise ModelSettingsError(
            f"The system prompt is longer than {config.MAX_MESSAGE_CHARS} characters."
        )
    model.name, model.pool = name, pool
    model.settings, model.parameters, model.system_prompt = settings, parameters, system_prompt
    try:
        with transaction.atomic():  # a savepoint: the request's transaction goes on
            model.save(update_fields=["name", "pool", "settings", "parameters", "system_prompt"])
    except IntegrityError:
        raise ModelSettingsError(f"A model named {name!r} exists already.") from None
    return model
