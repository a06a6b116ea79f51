"""Registering GGUF files that are already in the models folder: only files inside it,
only valid GGUFs, and the library shows what each file says about itself."""

from __future__ import annotations

import os

import pytest

from tests.gguf_files import (
    TINY_LLAMA_PARAMETERS,
    write_huge_declared_array,
    write_tiny_llama,
    write_wrong_magic,
)
from webui.chat import model_library
from webui.chat.model_library import ModelFileError, register_gguf
from webui.chat.models import LanguageModel

pytestmark = pytest.mark.django_db


def test_an_admin_registers_a_file_and_the_library_shows_its_header(models_dir, admin_client):
    (models_dir / "team").mkdir()
    write_tiny_llama(models_dir / "team" / "tiny.gguf", chat_template="{{ messages }}")
    page = admin_client.get("/manage/models/").content.decode()
    assert '<option value="team/tiny.gguf">' in page

    done = admin_client.post(
        "/manage/models/register/",
        {"file": "team/tiny.gguf", "name": "tiny", "pool": "cpu", "chat_format": ""},
        follow=True,
    )
    assert "Registered tiny." in done.content.decode()
    model = LanguageModel.objects.get(name="tiny")
    assert model.target == str((models_dir / "team" / "tiny.gguf").resolve())
    assert model.details["parameters"] == TINY_LLAMA_PARAMETERS
    page = admin_client.get("/manage/models/").content.decode()
    row = page[page.index('data-model="tiny"') :].split("</tr>")[0]
    for shown in ("llama", "1,128", "ALL_F32", ">64<", ">yes<"):
        assert shown in row
    assert '<option value="team/tiny.gguf">' not in page  # registered: no longer offered


@pytest.mark.parametrize(
    "path", ["../outside.gguf", "/etc/passwd", "", "link.gguf", "missing.gguf", "."]
)
def test_nothing_outside_the_models_folder_can_be_registered(models_dir, tmp_path, path):
    write_tiny_llama(tmp_path / "outside.gguf")
    os.symlink(tmp_path / "outside.gguf", models_dir / "link.gguf")
    with pytest.raises(ModelFileError):
        register_gguf(name="x", relative_path=path, pool="cpu", chat_format="gemma")
    assert not LanguageModel.objects.exists()
    assert model_library.unregistered_ggufs() == []  # the link leads out: not offered


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (write_wrong_magic, "wrong magic"),
        (write_huge_declared_array, "its header asks for more memory or time than a header needs"),
    ],
)
def test_a_bad_file_is_not_registered_and_says_why(models_dir, admin_client, write, reason):
    write(models_dir / "bad.gguf")
    done = admin_client.post(
        "/manage/models/register/",
        {"file": "bad.gguf", "name": "bad", "pool": "cpu", "chat_format": "gemma"},
        follow=True,
    )
    assert f"bad.gguf: not a valid GGUF: {reason}" in done.content.decode()
    assert not LanguageModel.objects.exists()


def test_a_file_without_a_template_needs_a_chat_format(models_dir):
    write_tiny_llama(models_dir / "plain.gguf")
    with pytest.raises(ModelFileError, match="has no chat template"):
        register_gguf(name="plain", relative_path="plain.gguf", pool="cpu")
    model = register_gguf(name="plain", relative_path="plain.gguf", pool="gpu", chat_format="gemma")
    assert model.settings == {"chat_format": "gemma"} and model.pool == "gpu"
    with pytest.raises(ModelFileError, match="exists already"):
        register_gguf(name="plain", relative_path="plain.gguf", pool="cpu", chat_format="gemma")
