"""Inference backends: plain Python, no Django.

A backend turns a :class:`GenerationRequest` into a stream of :class:`TextChunk` items
followed by exactly one :class:`Finished` carrying the usage record.
"""

from inference.base import (
    Backend,
    BackendError,
    ChatMessage,
    Finished,
    GenerationRequest,
    ModelSpec,
    Role,
    SamplingOptions,
    TextChunk,
    Usage,
)
from inference.registry import available_backends, configure_backend, get_backend, loaded_models

__all__ = [
    "Backend",
    "BackendError",
    "ChatMessage",
    "Finished",
    "GenerationRequest",
    "ModelSpec",
    "Role",
    "SamplingOptions",
    "TextChunk",
    "Usage",
    "available_backends",
    "configure_backend",
    "get_backend",
    "loaded_models",
]
