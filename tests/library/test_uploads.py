"""Chunked, resumable GGUF uploads through the admin's JSON endpoints: bytes go to a file
the server names, each chunk starts where the stored bytes end, a bad file is refused and
deleted, and the sha256 of a good one is shown."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.gguf_files import write_tiny_llama, write_wrong_magic
from webui import config
from webui.chat.models import LanguageModel
from webui.library.models import ModelUpload, UploadState

pytestmark = pytest.mark.django_db


@pytest.fixture
def models_dir(models_dir, monkeypatch) -> Path:
    """The test's own models folder, and chunks of 1000 bytes (a tiny GGUF spans several)."""
    monkeypatch.setattr(config, "UPLOAD_CHUNK_BYTES", 1000)
    return models_dir


def _start(client, filename: str, size: int):
    return client.post(
        "/manage/library/uploads/",
        {"filename": filename, "size": size},
        content_type="application/json",
    )


def _chunk(client, upload_id: str, offset: int, data: bytes):
    return client.post(
        f"/manage/library/uploads/{upload_id}/chunk/?offset={offset}",
        data,
        content_type="application/octet-stream",
    )


def _send_all(client, upload_id: str, data: bytes, start: int = 0) -> None:
    offset = start
    while offset < len(data):
        reply = _chunk(client, upload_id, offset, data[offset : offset + 1000])
        assert reply.status_code == 200, reply.json()
        offset = reply.json()["received"]


def test_a_gguf_arrives_in_chunks_is_checked_and_registered(admin_client, models_dir, tmp_path):
    data = write_tiny_llama(tmp_path / "tiny.gguf", chat_template="{{ messages }}").read_bytes()
    assert len(data) > 3000  # several chunks
    upload = _start(admin_client, "../../../etc/tiny.gguf", len(data)).json()
    _send_all(admin_client, upload["id"], data)
    done = admin_client.post(
        f"/manage/library/uploads/{upload['id']}/finish/", {"name": "tiny", "pool": "cpu"}
    )
    assert done.status_code == 200, done.json()
    assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
    model = LanguageModel.objects.get(name="tiny")
    stored = Path(model.target)
    assert stored.parent == models_dir and stored.read_bytes() == data
    assert stored.name.startswith("tiny-") and ".." not in stored.name
    assert not list((models_dir / ".uploads").iterdir())  # the part file became the model
    assert ModelUpload.objects.get(pk=upload["id"]).filename == "tiny.gguf"


def test_a_dropped_upload_goes_on_from_where_the_server_stands(admin_client, models_dir, tmp_path):
    data = write_tiny_llama(tmp_path / "tiny.gguf", chat_template="{{ messages }}").read_bytes()
    upload = _start(admin_client, "tiny.gguf", len(data)).json()
    assert _chunk(admin_client, upload["id"], 0, data[:1000]).status_code == 200
    # The reply to the next chunk was lost: the browser sends it again, and is told where
    # to go on from, without a byte stored twice.
    assert _chunk(admin_client, upload["id"], 1000, data[1000:2000]).status_code == 200
    again = _chunk(admin_client, upload["id"], 1000, data[1000:2000])
    assert again.status_code == 409 and again.json()["offset"] == 2000
    assert admin_client.get(f"/manage/library/uploads/{upload['id']}/").json()["received"] == 2000
    page = admin_client.get("/manage/models/").content.decode()
    assert f'data-upload="{upload["id"]}"' in page and 'value="2000"' in page
    _send_all(admin_client, upload["id"], data, start=2000)
    done = admin_client.post(
        f"/manage/library/uploads/{upload['id']}/finish/", {"name": "tiny", "pool": "cpu"}
    )
    assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_uploads_over_the_cap_are_refused_before_any_byte(admin_client, models_dir, monkeypatch):
    monkeypatch.setattr(config, "MAX_UPLOAD_BYTES", 5000)
    reply = _start(admin_client, "big.gguf", 5001)
    assert reply.status_code == 413 and "limited to" in reply.json()["error"]
    assert not ModelUpload.objects.exists()
    upload = _start(admin_client, "small.gguf", 1500).json()
    assert _chunk(admin_client, upload["id"], 0, b"x" * 1000).status_code == 200
    beyond = _chunk(admin_client, upload["id"], 1000, b"x" * 600)
    assert beyond.status_code == 413 and beyond.json()["offset"] == 1000
    too_big = _chunk(admin_client, upload["id"], 1000, b"x" * 1001)
    assert too_big.status_code == 400
    assert (models_dir / ".uploads" / f"{upload['id']}.part").stat().st_size == 1000


def test_a_file_that_is_not_a_gguf_is_refused_and_deleted(admin_client, models_dir, tmp_path):
    data = write_wrong_magic(tmp_path / "bad.gguf").read_bytes()
    upload = _start(admin_client, "bad.gguf", len(data)).json()
    _send_all(admin_client, upload["id"], data)
    done = admin_client.post(
        f"/manage/library/uploads/{upload['id']}/finish/", {"name": "bad", "pool": "cpu"}
    )
    assert done.status_code == 422
    assert "not a valid GGUF: wrong magic" in done.json()["error"]
    assert not LanguageModel.objects.filter(name="bad").exists()
    assert ModelUpload.objects.get(pk=upload["id"]).state == UploadState.FAILED
    assert not any(models_dir.rglob("*.part")) and not any(models_dir.glob("*.gguf"))


def test_an_incomplete_upload_cannot_be_finished(admin_client, models_dir):
    upload = _start(admin_client, "half.gguf", 2000).json()
    _chunk(admin_client, upload["id"], 0, b"x" * 1000)
    done = admin_client.post(
        f"/manage/library/uploads/{upload['id']}/finish/", {"name": "h", "pool": "cpu"}
    )
    assert done.status_code == 400 and done.json()["offset"] == 1000


@pytest.mark.django_db(transaction=True)
def test_two_finishes_of_one_upload_register_it_once(admin, models_dir, tmp_path):
    """Two tabs, or a retry after a proxy gave up, finish the same upload at once: one
    registers it, the other is told it is finished; neither fails with a server error."""
    import threading

    from django.db import connection

    from webui.library import uploads

    data = write_tiny_llama(tmp_path / "tiny.gguf", chat_template="{{ messages }}").read_bytes()
    upload = uploads.start_upload(admin, "tiny.gguf", len(data))
    import io

    for offset in range(0, len(data), 1000):
        piece = data[offset : offset + 1000]
        uploads.append_chunk(upload.pk, offset, len(piece), io.BytesIO(piece).read)
    outcomes: list[object] = []

    def finish() -> None:
        try:
            outcomes.append(uploads.finish_upload(upload.pk, name="tiny", pool="cpu").state)
        except uploads.UploadError as exc:
            outcomes.append(exc.status)
        finally:
            connection.close()

    threads = [threading.Thread(target=finish) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, outcomes)) == ["409", "done"]
    assert LanguageModel.objects.filter(name="tiny").count() == 1
