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
  // Sends and edits the server has not yet confirmed: request id -> {kind, text, message}.
  // The typed text stays where it was typed until the server says it saved it.
  const pending = new Map();
  const PENDING_PATIENCE_MS = 15000; // then Send works again (the text is still there)
  const elements = new Map(); // id -> <article>; never looked up in the DOM (model output is there)
  const ACTIVE = new Set(["queued", "running"]);
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
  let signedOut = false;
  let signOutReason = "";
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
    window.CorralMarkdown.render(target, text);
    addCopyButtons(target);
  }

  function addCopyButtons(target) {
    // Our own elements, made after sanitizing: model output cannot make buttons. Their
    // labels are CSS, so the message's text stays exactly the model's text.
    for (const pre of target.querySelectorAll("pre")) {
      const code = pre.querySelector("code") || pre;
      const text = code.textContent.replace(/\n$/, "");
      const block = document.createElement("div");
      block.className = "code-block";
      pre.replaceWith(block);
      const copy = document.createElement("button");
      copy.type = "button";
      copy.className = "copy-code";
      copy.setAttribute("aria-label", "Copy code");
      copy.addEventListener("click", () => {
        copyText(text).then(
          () => flashCopied(copy, "true"),
          () => flashCopied(copy, "false"),
        );
      });
      block.append(copy, pre);
    }
  }

  function flashCopied(copy, outcome) {
    copy.dataset.copied = outcome; // CSS shows "Copied" (or "Copy failed")
    clearTimeout(copy.copiedTimer);
    copy.copiedTimer = setTimeout(() => delete copy.dataset.copied, 2000);
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // Plain http on a LAN address has no clipboard API: the older, synchronous way.
    return new Promise((resolve, reject) => {
      const helper = document.createElement("textarea");
      helper.value = text;
      helper.readOnly = true;
      helper.className = "clipboard-helper";
      document.body.append(helper);
      helper.select();
      const copied = document.execCommand("copy");
      helper.remove();
      if (copied) resolve();
      else reject(new Error("copy refused"));
    });
  }

  function statusText(m) {
    if (m.role !== "assistant") return "";
    let text = STATUS_TEXT[m.status] || "";
    if (m.status === "queued" && m.queue) {
      text = `Queued: #${m.queue.position} in the ${m.queue.pool} queue`;
      if (m.queue.worker === false) text += `, waiting for a ${m.queue.pool} worker`;
      else if (m.queue.eta_s != null) text += `, about ${m.queue.eta_s} s`;
    }
    if (m.attempt > 1) text = `${text} (carried on by another worker after one was lost)`.trim();
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

  function openEditor(m, text = m.content) {
    const el = elements.get(m.id);
    if (!el) return;
    editing = m.id;
    const [body, , , , actions] = el.children;
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("aria-label", "Edit message");
    area.rows = 3;
    body.replaceChildren(area);
    const close = () => {
      editing = null;
      draw(messages.get(m.id) || m);
    };
    const save = button("Save edit", () => {
      if (!area.value.trim()) return showError("Type a message before sending.");
      // The editor stays open (its Save disabled) until the server saved the edit.
      const sent = send(
        { type: "edit", message: m.id, text: area.value, model: modelSelect.value || null },
        { kind: "edit", text: area.value, message: m.id },
      );
      if (sent) save.disabled = true;
    });
    actions.replaceChildren(save, button("Cancel", close));
    area.focus();
  }

  function closeEditor(id) {
    if (editing !== id) return;
    editing = null;
    const m = messages.get(id);
    if (m) draw(m);
  }

  function requestId() {
    // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Sends ``payload``; with ``track`` ({kind, text, message}) it also carries a request id
  // and waits for the server's "accepted" or "error" naming it. False if not connected.
  function send(payload, track) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showError("Not connected yet; try again in a moment.");
      return false;
    }
    showError("");
    if (track) {
      const request = requestId();
      payload = { ...payload, request };
      const entry = { ...track, patient: true };
      entry.timer = setTimeout(() => {
        // No word from the server: let the person try again; a late "accepted" still counts.
        entry.patient = false;
        if (entry.kind === "edit") enableEditorSave(entry.message);
        updateControls();
      }, PENDING_PATIENCE_MS);
      pending.set(request, entry);
    }
    socket.send(JSON.stringify(payload));
    updateControls();
    return true;
  }

  function settle(request) {
    const entry = pending.get(request);
    if (!entry) return null;
    clearTimeout(entry.timer);
    pending.delete(request);
    updateControls();
    return entry;
  }

  function accepted(request) {
    const entry = settle(request);
    if (!entry) return;
    if (entry.kind === "send") {
      // Only what was sent is cleared: the person may have typed on meanwhile.
      if (input.value === entry.text) input.value = "";
    } else if (entry.kind === "edit") {
      closeEditor(entry.message);
    }
  }

  function refused(data) {
    const entry = data.request ? settle(data.request) : null;
    showError(data.message || "Something went wrong.");
    if (entry && entry.kind === "edit") {
      const m = messages.get(entry.message);
      if (editing === entry.message) enableEditorSave(entry.message);
      else if (m) openEditor(m, entry.text); // the text goes back where it was typed
      return;
    }
    if (!entry && data.edit) {
      // A server that does not name the request: the edit's editor is still open.
      for (const [request, other] of pending) {
        if (other.kind === "edit" && other.message === data.edit) settle(request);
      }
      enableEditorSave(data.edit);
      return;
    }
    // The text is normally still in the box; this fills it only if the box was emptied.
    if (data.text && !input.value) input.value = data.text;
  }

  function enableEditorSave(id) {
    if (editing !== id) return;
    const el = elements.get(id);
    const save = el && el.children[4].firstElementChild;
    if (save) save.disabled = false;
  }

  function forgetPending() {
    // The socket closed: whether the server saved them is unknown; the texts stay put.
    for (const [request, entry] of pending) {
      settle(request);
      if (entry.kind === "edit") enableEditorSave(entry.message);
    }
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
    stopButton.disabled = !active || signedOut;
    let waiting = false;
    for (const entry of pending.values()) if (entry.kind === "send" && entry.patient) waiting = true;
    sendButton.disabled = waiting || signedOut;
    if (waiting) form.setAttribute("aria-busy", "true");
    else form.removeAttribute("aria-busy");
  }

  function setTitle(title) {
    document.getElementById("title").textContent = title;
    document.title = `${title} · Corral`;
  }

  function applyTitle(data) {
    const id = Number(data.conversation);
    if (!Number.isInteger(id) || typeof data.title !== "string") return;
    if (String(id) === conversationId) setTitle(data.title);
    const link = document.querySelector(`li[data-conversation-id="${id}"] .conversation-link`);
    if (link) link.textContent = data.title;
  }

  function showSignedOut(code) {
    signedOut = true;
    const reason =
      signOutReason ||
      (code === 4403 ? "Your account is waiting for approval." : "You were signed out.");
    const link = document.createElement("a");
    link.href = "/login/";
    link.textContent = "Sign in again";
    connection.replaceChildren(`${reason} `, link);
    root.dataset.connected = "false";
    root.dataset.signedOut = "true";
    updateControls();
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
        if (editing === id) editing = null; // an edited question leaves the branch
      }
    }
    if (snapshot.conversation) setTitle(snapshot.conversation.title);
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
    // This attempt went back to the queue (the reaper took it, or its worker handed it
    // off): its worker's late text is not the answer's. The next attempt has its own.
    if (m.status === "queued") return;
    if (d.seq <= m.seq) return; // already have it
    if (d.offset !== m.chars || d.seq !== m.seq + 1) return resync();
    m.content += d.text;
    m.chars += codePoints(d.text);
    m.seq = d.seq;
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
      else if (data.type === "accepted") accepted(data.request);
      else if (data.type === "error") refused(data);
      else if (data.type === "title") applyTitle(data);
      else if (data.type === "signed_out") {
        if (typeof data.reason === "string") signOutReason = data.reason;
      }
    });
    socket.addEventListener("close", (event) => {
      root.dataset.connected = "false";
      forgetPending();
      if (event.code === 4401 || event.code === 4403) {
        showSignedOut(event.code); // signing in again is a page load: no reconnecting
        return;
      }
      if (event.code === 4404) {
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
    if (signedOut || sendButton.disabled) return;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showError("Not connected yet; your message is still in the box.");
      return;
    }
    // The box is emptied when the server says it saved the message (see accepted()).
    send({ type: "send", text, model: modelSelect.value || null }, { kind: "send", text });
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

  // Events are hints and can be lost (a Redis restart, a web process reconnecting): while an
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
