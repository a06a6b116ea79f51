// Corral shared page: the server sends each message as plain text (readable without
// JavaScript) and the same messages as JSON; answers are re-rendered as markdown exactly
// as on the chat page (static/corral/markdown.js).
"use strict";

(function () {
  const data = document.getElementById("shared-data");
  const list = document.getElementById("shared-messages");
  if (!data || !list || !window.CorralMarkdown) return;
  const messages = JSON.parse(data.textContent);
  // Looked up before any model output is on the page.
  const articles = [...list.querySelectorAll(":scope > article.message")];
  messages.forEach((m, i) => {
    const article = articles[i];
    if (!article || m.role !== "assistant") return;
    window.CorralMarkdown.render(article.querySelector(".content"), m.content);
  });
})();
