"""An admin uploads a GGUF in Chromium: the connection drops mid-way, the page is
reloaded and still shows how far the upload got, and choosing the same file again goes
on from there, not from the start, ending with the file's sha256."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.conftest import PASSWORD, _stop, start_web_server
from tests.gguf_files import write_tiny_llama
from webui.chat.models import LanguageModel
from webui.library.models import ModelUpload

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHUNK = 64 * 1024


@pytest.fixture
def upload_server(stack_env, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    env = {**stack_env, "MODELS_DIR": str(models), "CORRAL_UPLOAD_CHUNK_BYTES": str(CHUNK)}
    server = start_web_server(env, tmp_path / "web.log")
    yield server, models
    _stop(server.process)


def test_an_upload_survives_a_dropped_connection_and_a_reload(
    page, upload_server, django_user_model, tmp_path
):
    server, models = upload_server
    django_user_model.objects.create_user("root", password=PASSWORD, is_staff=True)
    # A valid GGUF of several chunks: a tiny llama with a long chat template.
    path = write_tiny_llama(tmp_path / "tiny-upload.gguf", "{{ messages }}" + " " * 300_000)
    data = path.read_bytes()
    assert len(data) > 4 * CHUNK

    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{server.url}/manage/models/")
    form = page.get_by_role("form", name="Upload a GGUF")

    # Two chunks get through, then the connection drops for every chunk after.
    passed = []

    def drop_after_two(route):
        if len(passed) < 2:
            passed.append(route.request.url)
            route.continue_()
        else:
            route.abort("connectionreset")

    page.route(re.compile(r".*/chunk/\?offset=\d+$"), drop_after_two)
    form.get_by_label("File", exact=True).set_input_files(str(path))
    form.get_by_label("Name", exact=True).fill("tiny-upload")
    form.get_by_role("button", name="Upload").click()
    status = form.locator("[data-role=upload-status]")
    status.filter(has_text="Connection lost").wait_for(timeout=15_000)
    assert ModelUpload.objects.get().received == 2 * CHUNK

    # A reload: the page shows the unfinished upload and how far it got, from the server.
    page.unroute(re.compile(r".*/chunk/\?offset=\d+$"))
    page.reload()
    unfinished = page.locator("li[data-upload]")
    assert unfinished.get_attribute("data-received") == str(2 * CHUNK)
    assert float(unfinished.locator("progress").get_attribute("value")) == 2 * CHUNK
    assert "tiny-upload.gguf" in unfinished.inner_text()

    sent = []
    page.on("request", lambda request: "/chunk/" in request.url and sent.append(request.url))
    form = page.get_by_role("form", name="Upload a GGUF")
    form.get_by_label("File", exact=True).set_input_files(str(path))
    form.get_by_label("Name", exact=True).fill("tiny-upload")
    form.get_by_role("button", name="Upload").click()
    form.locator("[data-role=upload-status]").filter(has_text="Registered").wait_for(timeout=30_000)
    assert sent and f"offset={2 * CHUNK}" in sent[0]  # went on, did not start over
    assert not any(url.endswith("offset=0") for url in sent)
    sha = form.locator("[data-role=upload-sha256]").inner_text()
    assert sha == f"sha256 {hashlib.sha256(data).hexdigest()}"
    assert float(form.locator("[data-role=upload-progress]").evaluate("e => e.value")) == 1.0
    model = LanguageModel.objects.get(name="tiny-upload")
    assert model.details["has_chat_template"] and model.target.startswith(str(models))
