"""The model library: GGUF files in the models folder, checked before they are registered.

Only files inside ``MODELS_DIR`` can be registered: a path that leaves it (``..``, an
absolute path, a symlink pointing out) is refused. Every file's header is read in a limited
child process first (``inference.gguf_info``): a bad file is never registered, so no worker
ever tries to load it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction

from inference.gguf_info import InvalidGguf, inspect_gguf
from webui import config
from webui.chat.models import Backend, LanguageModel, Pool

# The chat formats an admin may pick for a GGUF without a template (llama-cpp-python's).
CHAT_FORMATS = ("gemma", "chatml", "llama-2", "llama-3", "mistral-instruct", "phi-3", "zephyr")


class ModelFileError(ValueError):
    """The file cannot be registered; the message says why."""


def models_dir() -> Path:
    return config.MODELS_DIR.resolve()


def file_in_models_dir(relative: str) -> Path:
    """``relative`` inside the models folder, after following every link; else refused."""
    root = models_dir()
    if not relative or Path(relative).is_absolute():
        raise ModelFileError("Choose a file inside the models folder.")
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ModelFileError("That path leads outside the models folder.")
    if not path.is_file():
        raise ModelFileError("No such file in the models folder.")
    return path


def folder_in_models_dir(relative: str) -> Path:
    """A Hugging Face model folder (it holds config.json) inside the models folder."""
    root = models_dir()
    if not relative or Path(relative).is_absolute():
        raise ModelFileError("Choose a folder inside the models folder.")
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ModelFileError("That path leads outside the models folder.")
    if not (path / "config.json").is_file():
        raise ModelFileError("No Hugging Face model folder (with a config.json) there.")
    return path


def hf_folders() -> list[str]:
    """Folders in the models folder that hold a Hugging Face model (config.json)."""
    root = models_dir()
    if not root.is_dir():
        return []
    found = []
    for config_file in sorted(root.glob("**/config.json")):
        folder = config_file.parent.resolve()
        if folder.is_relative_to(root) and folder != root and config_file.resolve().is_file():
            found.append(str(config_file.parent.relative_to(root)))
    return found


def unregistered_ggufs() -> list[str]:
    """GGUF files in the models folder (relative paths) that no model uses yet."""
    root = models_dir()
    if not root.is_dir():
        return []
    used = set(
        LanguageModel.objects.filter(backend=Backend.LLAMA_CPP).values_list("target", flat=True)
    )
    found = []
    for path in sorted(root.rglob("*.gguf")):
        resolved = path.resolve()
        if resolved.is_relative_to(root) and resolved.is_file() and str(resolved) not in used:
            found.append(str(path.relative_to(root)))
    return found


def register_gguf(
    *, name: str, relative_path: str, pool: str, chat_format: str = ""
) -> LanguageModel:
    """Check the file and register it as a llama.cpp model; raise ModelFileError."""
    name = name.strip()
    if not name:
        raise ModelFileError("Give the model a name.")
    if pool not in Pool.values:
        raise ModelFileError(f"Pool must be one of: {', '.join(Pool.values)}.")
    if chat_format and chat_format not in CHAT_FORMATS:
        raise ModelFileError(f"Chat format must be one of: {', '.join(CHAT_FORMATS)}.")
    path = file_in_models_dir(relative_path)
    return register_file(
        name, path, pool=pool, settings={"chat_format": chat_format} if chat_format else {}
    )


def register_file(
    name: str,
    path: Path,
    *,
    pool: str,
    settings: dict[str, Any],
    like: LanguageModel | None = None,
) -> LanguageModel:
    """Read ``path``'s header in the limited child and register it as a llama.cpp model;
    ``like``: its sampling, system prompt and groups too. Raise ModelFileError."""
    try:
        info = inspect_gguf(path)
    except InvalidGguf as exc:
        raise ModelFileError(f"{path.name}: {exc}") from exc
    if not info.has_chat_template and not settings.get("chat_format"):
        raise ModelFileError(
            f"{path.name} has no chat template: choose the chat format its model was trained "
            "with (for example gemma)."
        )
    try:
        with transaction.atomic():  # a savepoint: the request's transaction goes on
            model = LanguageModel.objects.create(
                name=name,
                backend=Backend.LLAMA_CPP,
                target=str(path),
                pool=pool,
                settings=settings,
                parameters=dict(like.parameters) if like else {},
                system_prompt=like.system_prompt if like else "",
                details=asdict(info),
            )
            if like is not None:
                model.groups.set(like.groups.all())
    except IntegrityError:
        raise ModelFileError(f"A model named {name!r} exists already.") from None
    return model


def describe_file(model: LanguageModel) -> None:
    """Fill in a llama.cpp model's file details where they are missing (models registered
    before the library read them); a file that cannot be read is left as it is."""
    if model.backend != Backend.LLAMA_CPP or model.details:
        return
    try:
        model.details = asdict(inspect_gguf(Path(model.target)))
    except InvalidGguf:
        return
    model.save(update_fields=["details"])
