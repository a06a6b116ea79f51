// Corral chat page: renders messages, streams answers over one websocket per conversation.
// The server's database is the truth: on connect, and whenever a delta does not line up
// with what we have, we ask for a snapshot and redraw from it.
"use strict";

(function () {
  const root = document.getElementById("chat");
  const list = document.getElementById("messages");
  const form = document.getElementById("composer");
  const input = document.getElementById("message-input");
  const modelSelect = document.getElementById("model-select");
  const sendButton = document.getElementById("send-button");
  const stopButton = document.getElementById("stop-button");
  const errorBox = document.getElementById("composer-error");
  const connection = document.getElementById("connection");
  const conversationId = root.dataset.conversationId;
  const emptyNote = list.querySelector(".empty"); // looked up before any model output exists

  const messages = new Map(); // id -> message payload (content, seq, status, ...)
  const elements = new Map(); // id -> <article>; never looked up in the DOM (model output is there)
  const ACTIVE = new Set(["queued", "running"]);
  // Sanitized markdown may not carry anything that looks like our own UI.
  const PURIFY = {
    USE_PROFILES: { html: true },
    ALLOW_DATA_ATTR: false,
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "article"],
    FORBID_ATTR: ["id", "name", "role", "aria-busy", "style"],
  };
  // The server counts text in code points; JavaScript strings count UTF-16 units.
  const codePoints = (text) => {
    let n = 0;
    for (const _ of text) n += 1;
    return n;
  };
  const STATUS_TEXT = {
    queued: "Queued…",
    running: "Generating…",
    stopped: "Stopped",
    failed: "Failed",
  };

  let socket = null;
  let retryDelay = 500;
  let resyncPending = false;
  let lastEventAt = Date.now();
  let editing = null; // id of the question being edited
  const unknownAsked = new Set(); // off-screen answers we already asked a snapshot for
  const dirty = new Set();
  let frameRequested = false;

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function renderMarkdown(target, text) {
    // Model output is untrusted: markdown to HTML, then DOMPurify, never raw HTML.
    if (window.marked && window.DOMPurify) {
      const html = window.marked.parse(text, { gfm: true, breaks: false });
      target.innerHTML = window.DOMPurify.sanitize(html, PURIFY);
    } else {
      target.textContent = text;
    }
  }

  function statusText(m) {
    if (m.role !== "assistant") return "";
    let text = STATUS_TEXT[m.status] || "";
    if (m.status === "queued" && m.queue) {
      text = `Queued: #${m.queue.position} in the ${m.queue.pool} queue`;
      if (m.queue.eta_s != null) text += `, about ${m.queue.eta_s} s`;
    }
    if (m.attempt > 1) text = `${text} (retried after a worker was lost)`.trim();
    return text;
  }

  function figures(m) {
    const parts = [];
    if (m.model) parts.push(m.model);
    if (m.completion_tokens != null) parts.push(`${m.completion_tokens} tokens`);
    if (m.tokens_per_second != null) parts.push(`${m.tokens_per_second.toFixed(1)} tok/s`);
    if (m.time_to_first_token_ms != null) parts.push(`TTFT ${m.time_to_first_token_ms} ms`);
    return parts.join(" · ");
  }

  function elementFor(m) {
    let el = elements.get(m.id);
    if (!el) {
      el = document.createElement("article");
      el.className = "message";
      el.dataset.messageId = String(m.id);
      el.dataset.role = m.role;
      const body = document.createElement("div");
      body.className = "content";
      const status = document.createElement("p");
      status.className = "status";
      const error = document.createElement("p");
      error.className = "message-error";
      const meta = document.createElement("p");
      meta.className = "meta";
      const actions = document.createElement("div");
      actions.className = "actions";
      el.append(body, status, error, meta, actions);
      list.append(el);
      elements.set(m.id, el);
      if (emptyNote) emptyNote.remove();
    }
    return el;
  }

  function draw(m) {
    const el = elementFor(m);
    const [body, status, error, meta, actions] = el.children;
    if (editing === m.id) return; // keep the open editor
    if (m.role === "assistant") renderMarkdown(body, m.content);
    else body.textContent = m.content;
    drawActions(actions, m);
    const active = ACTIVE.has(m.status);
    if (active) el.setAttribute("aria-busy", "true");
    else el.removeAttribute("aria-busy");
    el.dataset.status = m.status;
    status.textContent = statusText(m);
    error.textContent = m.error || "";
    meta.textContent = m.role === "assistant" && !active ? figures(m) : "";
  }

  function button(label, onClick, ariaLabel) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (ariaLabel) b.setAttribute("aria-label", ariaLabel);
    b.addEventListener("click", onClick);
    return b;
  }

  function drawActions(actions, m) {
    actions.replaceChildren();
    const versions = m.versions;
    if (versions && versions.ids.length > 1) {
      const i = versions.index - 1;
      const prev = button("‹", () => send({ type: "version", message: versions.ids[i - 1] }), "Previous version");
      const next = button("›", () => send({ type: "version", message: versions.ids[i + 1] }), "Next version");
      prev.disabled = i === 0;
      next.disabled = i === versions.ids.length - 1;
      const label = document.createElement("span");
      label.className = "version-label";
      label.textContent = `${versions.index}/${versions.ids.length}`;
      actions.append(prev, label, next);
    }
    if (ACTIVE.has(m.status)) return;
    if (m.role === "assistant") {
      actions.append(button("Regenerate", () =>
        send({ type: "regenerate", message: m.id, model: modelSelect.value || null })));
    } else {
      actions.append(button("Edit", () => openEditor(m)));
    }
  }

  function openEditor(m) {
    editing = m.id;
    const el = elements.get(m.id);
    const [body, , , , actions] = el.children;
    const area = document.createElement("textarea");
    area.value = m.content;
    area.setAttribute("aria-label", "Edit message");
    area.rows = 3;
    body.replaceChildren(area);
    const close = () => {
      editing = null;
      draw(messages.get(m.id) || m);
    };
    actions.replaceChildren(
      button("Save edit", () => {
        if (!area.value.trim()) return showError("Type a message before sending.");
        send({ type: "edit", message: m.id, text: area.value, model: modelSelect.value || null });
        close();
      }),
      button("Cancel", close),
    );
    area.focus();
  }

  function send(payload) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showError("Not connected yet; try again in a moment.");
      return;
    }
    showError("");
    socket.send(JSON.stringify(payload));
  }

  function scheduleDraw(id) {
    dirty.add(id);
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(() => {
      frameRequested = false;
      const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
      for (const dirtyId of dirty) {
        const m = messages.get(dirtyId);
        if (m) draw(m);
      }
      dirty.clear();
      if (nearBottom) list.scrollTop = list.scrollHeight;
      updateControls();
    });
  }

  function updateControls() {
    let active = false;
    for (const m of messages.values()) if (ACTIVE.has(m.status)) active = true;
    stopButton.disabled = !active;
  }

  function keepStreamedText(m, known) {
    // A snapshot or state event can be older than the deltas we already applied.
    if (
      known &&
      m.status === "running" &&
      known.attempt === m.attempt &&
      known.seq > m.seq &&
      known.content.startsWith(m.content)
    ) {
      m.content = known.content;
      m.seq = known.seq;
    }
    m.chars = codePoints(m.content);
  }

  function applySnapshot(snapshot) {
    const previous = new Map(messages);
    messages.clear(); // rebuilt in the snapshot's (the branch's) order
    for (const m of snapshot.messages) {
      const known = previous.get(m.id);
      if (m.resumed) {
        // We told the server what we have; it sends only the deltas after it.
        m.content = known ? known.content : "";
        m.seq = known ? known.seq : 0;
      }
      keepStreamedText(m, known);
      messages.set(m.id, m);
      scheduleDraw(m.id);
    }
    for (const id of previous.keys()) {
      if (!messages.has(id)) {
        const el = elements.get(id);
        elements.delete(id);
        if (el) el.remove();
      }
    }
    if (snapshot.conversation) document.getElementById("title").textContent = snapshot.conversation.title;
  }

  function applyDelta(d) {
    const m = messages.get(d.message);
    if (!m) {
      // An answer on another branch (versions): not on screen. Ask once, not per delta.
      if (!unknownAsked.has(d.message)) {
        unknownAsked.add(d.message);
        resync();
      }
      return;
    }
    if (d.attempt !== m.attempt) return resync(); // a new attempt replaces the text
    if (d.seq <= m.seq) return; // already have it
    if (d.offset !== m.chars || d.seq !== m.seq + 1) return resync();
    m.content += d.text;
    m.chars += codePoints(d.text);
    m.seq = d.seq;
    if (m.status === "queued") m.status = "running";
    scheduleDraw(m.id);
  }

  function applyState(m) {
    const known = messages.get(m.id);
    if (!known) {
      // Only a message that continues the branch on screen belongs on screen.
      const last = [...messages.values()].pop();
      if (last && m.parent !== last.id) return;
    }
    if (known && m.version < known.version) return; // a late, older event
    if (known && known.queue && m.status === "queued") m.queue = known.queue;
    if (known && !m.versions) m.versions = known.versions; // state events carry no versions
    keepStreamedText(m, known);
    messages.set(m.id, m);
    scheduleDraw(m.id);
  }

  function resync() {
    if (resyncPending || !socket || socket.readyState !== WebSocket.OPEN) return;
    resyncPending = true;
    socket.send(JSON.stringify({ type: "sync" }));
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    // Tell the server how far each active answer got, so it sends only what we missed.
    const resume = [...messages.values()]
      .filter((m) => ACTIVE.has(m.status) && m.attempt > 0)
      .map((m) => `${m.id}.${m.attempt}.${m.seq}`)
      .join(",");
    const query = resume ? `?resume=${resume}` : "";
    socket = new WebSocket(`${scheme}://${location.host}/ws/conversations/${conversationId}/${query}`);
    socket.addEventListener("open", () => {
      retryDelay = 500;
      connection.textContent = "";
      root.dataset.connected = "true";
    });
    socket.addEventListener("message", (event) => {
      lastEventAt = Date.now();
      const data = JSON.parse(event.data);
      if (data.type === "snapshot") {
        resyncPending = false;
        applySnapshot(data);
      } else if (data.type === "delta") applyDelta(data);
      else if (data.type === "message") applyState(data.message);
      else if (data.type === "queue") {
        const m = messages.get(data.message);
        if (m && m.status === "queued") {
          m.queue = { pool: data.pool, position: data.position, eta_s: data.eta_s };
          scheduleDraw(m.id);
        }
      }
      else if (data.type === "error") {
        showError(data.message);
        if (data.text && !input.value) input.value = data.text;
      }
    });
    socket.addEventListener("close", (event) => {
      root.dataset.connected = "false";
      if (event.code === 4401 || event.code === 4404) {
        connection.textContent = "This conversation is not available.";
        return;
      }
      connection.textContent = "Reconnecting…";
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 5000);
    });
  }

  form.addEventListener("submit", (event) => {
    showError("");
    const text = input.value;
    if (!text.trim()) {
      event.preventDefault();
      showError("Type a message before sending.");
      return;
    }
    if (!conversationId) return; // a new chat is a normal form post that creates it
    event.preventDefault();
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showError("Not connected yet; your message is still in the box.");
      return;
    }
    socket.send(JSON.stringify({ type: "send", text, model: modelSelect.value || null }));
    input.value = "";
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendButton.click();
    }
  });

  stopButton.addEventListener("click", () => {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    for (const m of messages.values()) {
      if (ACTIVE.has(m.status)) socket.send(JSON.stringify({ type: "stop", message: m.id }));
    }
  });

  // Events are hints and can be lost (channel layer capacity, a Redis restart): while an
  // answer is active and nothing has arrived for a while, ask the database again.
  setInterval(() => {
    const active = [...messages.values()].some((m) => ACTIVE.has(m.status));
    if (active && Date.now() - lastEventAt > 5000) {
      lastEventAt = Date.now();
      resyncPending = false;
      resync();
    }
  }, 1000);

  const initial = document.getElementById("snapshot");
  const snapshot = initial ? JSON.parse(initial.textContent) : null;
  if (snapshot) applySnapshot(snapshot);
  if (conversationId) connect();
})();
