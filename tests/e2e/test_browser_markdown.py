"""Code in answers: highlighted, sanitized like everything else, and one click to copy."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import sign_in
from tests.ollama_server import OllamaTestServer

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CODE = 'def add(a, b):\n    """<img src=x onerror="window.__owned=1">"""\n    return a + b'
ANSWER = (
    "Here it is:\n\n"
    f"```python\n{CODE}\n```\n\n"
    '<p class="meta">not the real figures</p> <span class="hljs-keyword">ok</span>\n'
)
ANSWER_DONE = """() => { const el = [...document.querySelectorAll('[data-role="assistant"]')].pop();
                         return el && el.dataset.status === 'done'; }"""


def test_code_is_highlighted_and_copy_puts_exactly_the_code_on_the_clipboard(
    page,
    alice,
    worker,
    web_server,
):
    from webui.chat.models import LanguageModel

    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web_server.url)
    with OllamaTestServer(models={"coder:latest": ANSWER}) as server:
        LanguageModel.objects.create(
            name="coder", backend="ollama", target="coder:latest", settings={"host": server.url}
        )
        sign_in(page, web_server.url)
        page.get_by_label("Model").select_option(label="coder")
        page.get_by_label("Message").fill("Write an add function in Python.")
        page.get_by_role("button", name="Send").click()
        page.wait_for_function(ANSWER_DONE, timeout=30_000)

    answer = page.locator('[data-role="assistant"]').last
    code = answer.locator("pre code")
    assert code.get_attribute("class") == "hljs language-python"
    keywords = code.locator(".hljs-keyword").all_inner_texts()
    assert "def" in keywords and "return" in keywords
    assert code.locator(".hljs-string").count() == 1
    # Highlighting went through the sanitizer: the code's markup is text, nothing runs.
    assert code.inner_text().rstrip("\n") == CODE
    assert answer.locator("img").count() == 0
    assert page.evaluate("() => window.__owned") is None
    # Only highlight.js's classes survive: model output cannot pass for our own elements.
    assert answer.locator(".meta").count() == 1
    assert answer.locator("span.hljs-keyword", has_text="ok").count() == 1

    copy = answer.get_by_role("button", name="Copy code")
    assert copy.count() == 1
    copy.click()
    page.wait_for_function(
        """() => document.querySelector('.copy-code').dataset.copied === 'true'""",
        timeout=5_000,
    )
    assert page.evaluate("() => navigator.clipboard.readText()") == CODE
    shown = copy.evaluate("el => getComputedStyle(el, '::after').content")
    assert shown == '"Copied"'
    # The button's label is no part of the answer's text.
    assert "Copy" not in answer.locator(".content").inner_text()
