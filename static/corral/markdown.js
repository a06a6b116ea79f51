// Corral's one way to show model output: marked (fenced code in a known language
// highlighted by highlight.js), then DOMPurify. Used by the chat page and shared pages.
// Model output is untrusted: it never reaches the page as raw HTML.
"use strict";

window.CorralMarkdown = (function () {
  // Sanitized markdown may not carry anything that looks like our own UI.
  const PURIFY = {
    USE_PROFILES: { html: true },
    ALLOW_DATA_ATTR: false,
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "article"],
    FORBID_ATTR: ["id", "name", "role", "aria-busy", "style"],
  };
  // The only classes model output keeps: highlight.js's, on span and code. Any other class
  // could dress model output up as one of our own elements (".meta", ".actions", ...).
  const CODE_CLASS = /^(hljs(-[a-z0-9_-]+)?|[a-z]+_+|language-[\w+#.-]+)$/i;

  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  function highlightCode({ text, lang }) {
    const language = (lang || "").trim().split(/\s+/)[0];
    // Without a (known) language, marked's own escaping: guessing (highlightAuto) tries
    // every grammar, on every frame of a streaming answer.
    if (!language || !window.hljs.getLanguage(language)) return false;
    const code = text ? `${text.replace(/\n$/, "")}\n` : "";
    try {
      const html = window.hljs.highlight(code, { language, ignoreIllegals: true }).value;
      return `<pre><code class="hljs language-${escapeHtml(language)}">${html}</code></pre>\n`;
    } catch (_) {
      return false;
    }
  }

  function setUp() {
    if (!window.marked || !window.DOMPurify) return false;
    window.DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
      if (data.attrName !== "class") return;
      const name = node.nodeName.toLowerCase();
      const kept = name === "span" || name === "code"
        ? data.attrValue.split(/\s+/).filter((token) => CODE_CLASS.test(token))
        : [];
      if (kept.length) data.attrValue = kept.join(" ");
      else data.keepAttr = false;
    });
    // Highlighted HTML is produced before sanitizing, so it goes through DOMPurify too.
    if (window.hljs) window.marked.use({ renderer: { code: highlightCode } });
    return true;
  }

  const ready = setUp();

  // Put ``text`` into ``target`` as sanitized HTML (plain text if the libraries are missing).
  function render(target, text) {
    if (!ready) {
      target.textContent = text;
      return;
    }
    const html = window.marked.parse(text, { gfm: true, breaks: false });
    target.innerHTML = window.DOMPurify.sanitize(html, PURIFY);
  }

  return { render, PURIFY };
})();
