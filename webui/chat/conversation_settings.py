"""A conversation's own system prompt and sampling parameters.

``Conversation.parameters`` holds only what the person chose; everything else is the
model's default, so a model whose defaults an admin changes later changes with them. The
worker merges the two in ``generation.build_request``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from pydantic import ValidationError as PydanticValidationError

from inference import SamplingOptions
from webui import config
from webui.chat import selectors
from webui.chat.models import Conversation, LanguageModel

# What a person may set, in the order the panel shows them, with the label it shows.
# ``stop`` is a SamplingOptions field too, but a model-level setting: not offered here.
LABELS: dict[str, str] = {
    "temperature": "Temperature",
    "top_p": "Top P",
    "top_k": "Top K",
    "repeat_penalty": "Repeat penalty",
    "max_tokens": "Max tokens",
    "seed": "Seed",
}
EDITABLE = tuple(LABELS)
# llama.cpp takes an unsigned 32-bit seed; SamplingOptions itself leaves seed unbounded.
SEED_MAX = 2**32 - 1


def update_settings(
    *,
    user: AbstractBaseUser,
    conversation_id: int,
    system_prompt: str,
    parameters: dict[str, Any],
) -> Conversation:
    """Replace the conversation's system prompt and parameter overrides.

    ``parameters`` is the whole set the person wants: a missing or blank value (``""`` or
    None) means "the model's default" and is not stored. Raises
    ``Conversation.DoesNotExist`` for an id that is not the user's, and ``ValidationError``
    (messages name the field) before anything is saved.
    """
    with transaction.atomic():
        conversation = (
            selectors.conversations_for(user)
            .select_for_update(of=("self",))
            .select_related("model")
            .filter(pk=conversation_id)
            .first()
        )
        # Before any check of the input: another person's id is a 404, whatever was sent.
        if conversation is None:
            raise Conversation.DoesNotExist
        prompt = _validate_system_prompt(system_prompt)
        overrides = validate_parameters(parameters, conversation.model)
        conversation.system_prompt = prompt
        conversation.parameters = overrides
        conversation.save(update_fields=["system_prompt", "parameters", "updated_at"])
    return conversation


def _validate_system_prompt(value: str | None) -> str:
    prompt = (value or "").strip()
    limit = settings.CORRAL["MAX_MESSAGE_CHARS"]
    if len(prompt) > limit:
        raise ValidationError(
            {
                "system_prompt": (
                    f"The system prompt is {len(prompt):,} characters long; the limit is {limit:,}."
                )
            },
            code="too_long",
        )
    return prompt


def validate_parameters(
    parameters: dict[str, Any], model: LanguageModel | None
) -> dict[str, int | float]:
    """The non-blank values of ``parameters``, checked by SamplingOptions over the model's
    defaults and returned with their proper types (ready for the JSON field)."""
    unknown = sorted(set(parameters) - set(EDITABLE))
    if unknown:
        raise ValidationError(f"Unknown setting(s): {', '.join(unknown)}.", code="unknown")
    chosen = {name: _clean(value) for name, value in parameters.items()}
    chosen = {name: value for name, value in chosen.items() if value is not None}
    errors: dict[str, list[str]] = {}
    for name, value in chosen.items():
        if isinstance(value, bool):  # pydantic would read True as 1
            errors[name] = [f"{LABELS[name]} must be a number."]
    defaults = dict(model.parameters) if model is not None else {}
    try:
        merged = SamplingOptions(**{**defaults, **chosen})
    except PydanticValidationError as exc:
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            if field in chosen:
                errors.setdefault(field, []).append(_message(field, error))
            else:  # an admin's mistake, not the person's: say so instead of blaming them
                errors.setdefault("__all__", []).append(
                    f"This model's default for {field or 'a setting'} is invalid; "
                    "ask an admin to fix the model."
                )
        merged = None
    cap = config.MAX_TOKENS_PER_ANSWER
    if merged is not None and "max_tokens" in chosen and merged.max_tokens > cap:
        errors["max_tokens"] = [f"Max tokens must be at most {cap:,} (this server's limit)."]
    if merged is not None and "seed" in chosen and not 0 <= (merged.seed or 0) <= SEED_MAX:
        errors["seed"] = [f"Seed must be a whole number from 0 to {SEED_MAX}."]
    if errors:
        raise ValidationError(errors)
    assert merged is not None
    return {name: getattr(merged, name) for name in EDITABLE if name in chosen}


def _clean(value: Any) -> Any:
    """Blank form values mean "the model's default"."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


_TEMPLATES = {
    "less_than_equal": "{label} must be at most {le}.",
    "greater_than_equal": "{label} must be at least {ge}.",
    "less_than": "{label} must be less than {lt}.",
    "greater_than": "{label} must be more than {gt}.",
    "float_parsing": "{label} must be a number.",
    "float_type": "{label} must be a number.",
    "finite_number": "{label} must be a number.",
    "int_parsing": "{label} must be a whole number.",
    "int_type": "{label} must be a whole number.",
    "int_from_float": "{label} must be a whole number.",
}


def _message(field: str, error: Any) -> str:
    template = _TEMPLATES.get(error["type"])
    label = LABELS.get(field, field)
    if template is None:
        return f"{label}: {error['msg']}."
    return template.format(label=label, **{k: _number(v) for k, v in error.get("ctx", {}).items()})


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def model_defaults(model: LanguageModel | None) -> SamplingOptions:
    """What a request of this model uses where the conversation sets nothing (as
    build_request applies it, max_tokens capped). Invalid model defaults show as the
    built-in ones: the worker reports them when it runs an answer."""
    try:
        options = SamplingOptions(**(model.parameters if model is not None else {}))
    except PydanticValidationError:
        options = SamplingOptions()
    if options.max_tokens > config.MAX_TOKENS_PER_ANSWER:
        options = options.model_copy(update={"max_tokens": config.MAX_TOKENS_PER_ANSWER})
    return options


def effective_settings(conversation: Conversation) -> dict[str, dict[str, Any]]:
    """Each setting as a request of this conversation gets it, for display:
    ``{name: {"value", "default" (the model's), "is_default", "label"}}``, the system
    prompt first (its default is none)."""
    defaults = model_defaults(conversation.model)
    overrides = conversation.parameters or {}
    result: dict[str, dict[str, Any]] = {
        "system_prompt": {
            "label": "System prompt",
            "value": conversation.system_prompt,
            "default": "",
            "is_default": not conversation.system_prompt,
        }
    }
    for name, label in LABELS.items():
        default = getattr(defaults, name)
        is_default = overrides.get(name) is None
        result[name] = {
            "label": label,
            "value": default if is_default else overrides[name],
            "default": default,
            "is_default": is_default,
        }
    return result
