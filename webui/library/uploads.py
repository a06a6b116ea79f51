"""GGUF uploads in chunks, resumable.

An upload is declared first (file name for display, size checked against the cap), then
its bytes arrive in chunks, each of which must start exactly where the stored bytes end:
a chunk sent twice after a dropped connection, or one from the wrong place, is refused
with the offset to go on from. The bytes live in ``MODELS_DIR/.uploads/<id>.part``, a name
the server chose. Once complete, the file's sha256 is computed, its header is read in a
limited child process (``inference.gguf_info``), and only a valid GGUF is moved into the
models folder, under a server-chosen name, and registered.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.utils.text import slugify

from inference.gguf_info import InvalidGguf, inspect_gguf
from webui import config
from webui.chat import model_library
from webui.library.models import ModelUpload, UploadState

HASH_BLOCK = 1024 * 1024


class UploadError(ValueError):
    """The request is refused; the message says why. ``offset``: where to go on from."""

    def __init__(self, message: str, offset: int | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.offset = offset
        self.status = status


def uploads_dir() -> Path:
    return model_library.models_dir() / ".uploads"


def part_path(upload: ModelUpload) -> Path:
    return uploads_dir() / f"{upload.pk}.part"


def _size_text(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def start_upload(user: AbstractBaseUser, filename: str, size: int) -> ModelUpload:
    if size <= 0:
        raise UploadError("The file is empty.")
    if size > config.MAX_UPLOAD_BYTES:
        raise UploadError(
            f"The file is {_size_text(size)}; uploads are limited to "
            f"{_size_text(config.MAX_UPLOAD_BYTES)} (CORRAL_MAX_UPLOAD_BYTES).",
            status=413,
        )
    display = Path(filename.replace("\\", "/")).name[:255] or "upload.gguf"
    upload = ModelUpload.objects.create(filename=display, size=size, created_by=user)
    uploads_dir().mkdir(parents=True, exist_ok=True)
    part_path(upload).touch()
    return upload


def resumable() -> list[ModelUpload]:
    """Uploads still receiving, newest first (every admin may finish any of them)."""
    return list(ModelUpload.objects.filter(state=UploadState.RECEIVING))


@contextmanager
def _locked(upload: ModelUpload) -> Iterator[Any]:
    """The part file, held by one request at a time (retries may overlap)."""
    path = part_path(upload)
    if not path.is_file():
        raise UploadError("This upload's bytes are gone: start it again.", status=410)
    with path.open("r+b") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield file
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def append_chunk(
    upload_id: uuid.UUID | str, offset: int, length: int, read: Callable[[int], bytes]
) -> ModelUpload:
    """Store ``length`` bytes that belong at ``offset``; ``read(n)`` gives the body."""
    upload = ModelUpload.objects.get(pk=upload_id)
    if upload.state != UploadState.RECEIVING:
        raise UploadError("This upload is finished.", offset=upload.received, status=409)
    if length <= 0 or length > config.UPLOAD_CHUNK_BYTES:
        raise UploadError(
            f"A chunk carries 1 to {config.UPLOAD_CHUNK_BYTES} bytes.", offset=upload.received
        )
    with _locked(upload) as file:
        upload.refresh_from_db()
        if offset != upload.received:
            raise UploadError(
                f"The upload goes on from byte {upload.received}.",
                offset=upload.received,
                status=409,
            )
        if offset + length > upload.size:
            raise UploadError(
                f"That is more than the {upload.size} bytes declared.",
                offset=upload.received,
                status=413,
            )
        # Bytes past ``received`` are from a request that died before it was recorded.
        file.truncate(offset)
        file.seek(offset)
        left = length
        while left:
            block = read(min(left, HASH_BLOCK))
            if not block:
                break
            file.write(block)
            left -= len(block)
        if left:
            file.truncate(offset)
            raise UploadError("The chunk ended early; send it again.", offset=offset)
        file.flush()
        os.fsync(file.fileno())
        ModelUpload.objects.filter(pk=upload.pk).update(received=offset + length)
    upload.refresh_from_db()
    return upload


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def finish_upload(
    upload_id: uuid.UUID | str, *, name: str, pool: str, chat_format: str = ""
) -> ModelUpload:
    """Check the complete file and register it; a bad file is deleted and the upload
    failed, saying why."""
    name = name.strip()
    if not name or len(name) > 200:
        raise UploadError("Give the model a name of at most 200 characters.")
    upload = ModelUpload.objects.get(pk=upload_id)
    if upload.state != UploadState.RECEIVING:
        raise UploadError("This upload is finished.", status=409)
    # One finish at a time (two tabs, or a retry after a proxy timed out): the second
    # waits, then finds the upload finished.
    with _locked(upload):
        upload.refresh_from_db()
        if upload.state != UploadState.RECEIVING:
            raise UploadError("This upload is finished.", status=409)
        return _check_and_register(upload, name, pool, chat_format)


def _check_and_register(upload: ModelUpload, name: str, pool: str, chat_format: str) -> ModelUpload:
    if upload.received != upload.size:
        raise UploadError(
            f"{upload.received} of {upload.size} bytes arrived.", offset=upload.received
        )
    part = part_path(upload)
    upload.sha256 = _sha256(part)
    try:
        inspect_gguf(part)
    except InvalidGguf as exc:
        part.unlink(missing_ok=True)
        upload.state, upload.error = UploadState.FAILED, f"{upload.filename}: {exc}"
        upload.save()
        return upload
    stem = slugify(Path(upload.filename).stem)[:60] or "upload"
    destination = model_library.models_dir() / f"{stem}-{str(upload.pk)[:8]}.gguf"
    os.replace(part, destination)
    try:
        model = model_library.register_gguf(
            name=name, relative_path=destination.name, pool=pool, chat_format=chat_format
        )
    except model_library.ModelFileError as exc:
        os.replace(destination, part)  # still whole: a better name or format may follow
        raise UploadError(str(exc)) from exc
    upload.state, upload.model, upload.error = UploadState.DONE, model, ""
    upload.save()
    return upload


def discard(upload: ModelUpload) -> None:
    part_path(upload).unlink(missing_ok=True)
    ModelUpload.objects.filter(pk=upload.pk, state=UploadState.RECEIVING).update(
        state=UploadState.FAILED, error="Discarded."
    )


def describe(upload: ModelUpload) -> dict[str, Any]:
    return {
        "id": str(upload.pk),
        "filename": upload.filename,
        "size": upload.size,
        "received": upload.received,
        "state": upload.state,
        "sha256": upload.sha256,
        "error": upload.error,
        "model": upload.model.name if upload.model_id and upload.model else "",
        "chunk_bytes": config.UPLOAD_CHUNK_BYTES,
    }
