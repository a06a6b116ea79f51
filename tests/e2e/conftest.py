"""Browser fixtures (Debian's Chromium driven by Playwright, never `playwright install`),
and the fault tests' own gpu workers."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import PASSWORD, Worker, _stop, start_worker

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture
def page(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls made by the
    # test itself are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's `chromium` package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context()
        yield context.new_page()
        context.close()
        browser.close()


def sign_in(page, base_url: str) -> None:
    page.goto(f"{base_url}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


# Fault tests use the gpu pool, which the suite's shared worker does not consume, so only
# the workers a test starts (and kills) can take its answers.
POOL = "gpu"
FAST_REAPER = {
    "CORRAL_HEARTBEAT_INTERVAL_S": "0.5",
    "CORRAL_HEARTBEAT_STALE_S": "4",
    "CORRAL_REAP_INTERVAL_S": "1",
}


@pytest.fixture
def long_gemma(gemma):
    gemma.pool = POOL
    gemma.parameters = {**gemma.parameters, "max_tokens": 240}
    gemma.save()
    return gemma


@pytest.fixture
def gpu_workers(stack_env, tmp_path):
    """Start gpu workers on demand; whatever is still running at the end is stopped."""
    started: list[Worker] = []
    env = {**stack_env, **FAST_REAPER}

    def start(name: str, settings: dict[str, str] | None = None) -> Worker:
        worker = start_worker(
            {**env, **(settings or {})}, tmp_path / f"{name}.log", queues=POOL, label=name
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        _stop(worker.process)
