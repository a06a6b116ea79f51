"""Backend registry: names map to modules imported on first use (llama_cpp is heavy)."""

from __future__ import annotations

import importlib
from functools import cache

from inference.base import Backend, BackendError

_BACKENDS: dict[str, str] = {
    "llama_cpp": "inference.llama_cpp:LlamaCppBackend",
    "ollama": "inference.ollama:OllamaBackend",
}


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


_instances: dict[str, Backend] = {}
_options: dict[str, dict[str, object]] = {}


def configure_backend(name: str, **options: object) -> None:
    """Options for ``name``'s constructor, set by the process before it first uses it (the
    worker passes its settings this way: this package reads no configuration itself)."""
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}")
    _options[name] = options


@cache
def get_backend(name: str) -> Backend:
    """Return the process-wide backend instance for ``name`` (it keeps loaded models)."""
    try:
        module_name, _, class_name = _BACKENDS[name].partition(":")
    except KeyError:
        raise BackendError(f"unknown backend {name!r}") from None
    module = importlib.import_module(module_name)
    backend: Backend = getattr(module, class_name)(**_options.get(name, {}))
    _instances[name] = backend
    return backend


def loaded_models() -> list[str]:
    """What this process holds loaded, over the backends it has used (none is imported
    for asking)."""
    return [target for backend in list(_instances.values()) for target in backend.loaded()]
