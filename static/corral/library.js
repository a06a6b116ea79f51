// The Models page: the model jobs table follows the server (every admin sees the same rows,
// a refresh loses nothing: the database is the truth and this only redraws it).
(function () {
  "use strict";
  const table = document.querySelector("table.model-jobs");
  if (!table) return;
  const body = table.tBodies[0];
  const csrf = () => {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  };
  const FINISHED = new Set(["done", "failed", "cancelled"]);

  function cell(text, role) {
    const td = document.createElement("td");
    if (role) td.dataset.role = role;
    td.textContent = text;
    return td;
  }

  function row(job) {
    const tr = document.createElement("tr");
    tr.dataset.job = job.id;
    tr.dataset.state = job.state;
    tr.append(cell(`${job.kind_label}: ${job.title}`), cell(job.state, "state"));
    const progressCell = document.createElement("td");
    const bar = document.createElement("progress");
    bar.max = 1;
    if (job.progress !== null) bar.value = job.progress;
    bar.setAttribute("aria-label", `Progress of job ${job.id}`);
    const status = document.createElement("span");
    status.dataset.role = "status";
    status.textContent = job.status;
    progressCell.append(bar, " ", status);
    tr.append(progressCell);
    const result = cell("", "result");
    if (job.error) {
      const span = document.createElement("span");
      span.className = "error";
      span.textContent = job.error;
      result.append(span);
    } else {
      result.textContent = job.result_model;
      if (job.summary) {
        const summary = document.createElement("span");
        summary.dataset.role = "summary";
        summary.textContent = job.summary;
        result.append(" ", summary);
      }
    }
    tr.append(result, cell(job.created_by));
    const actions = document.createElement("td");
    if (job.cancellable) {
      const form = document.createElement("form");
      form.method = "post";
      form.action = `/manage/library/jobs/${job.id}/cancel/`;
      const token = document.createElement("input");
      token.type = "hidden";
      token.name = "csrfmiddlewaretoken";
      token.value = csrf();
      const button = document.createElement("button");
      button.type = "submit";
      button.textContent = "Cancel";
      form.append(token, button);
      actions.append(form);
    }
    tr.append(actions);
    return tr;
  }

  let finishedSeen = new Set(
    [...body.querySelectorAll("tr[data-job]")]
      .filter((tr) => FINISHED.has(tr.dataset.state))
      .map((tr) => tr.dataset.job),
  );

  async function refresh() {
    if (document.hidden) return;
    let reply;
    try {
      reply = await fetch(table.dataset.url, { headers: { Accept: "application/json" } });
    } catch (error) {
      return; // the server is away for a moment: the next round tries again
    }
    if (!reply.ok) return;
    const { jobs } = await reply.json();
    const rows = jobs.map(row);
    body.replaceChildren(...rows);
    if (!jobs.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell("No model jobs yet.");
      td.colSpan = 6;
      td.className = "muted";
      tr.append(td);
      body.append(tr);
    }
    // A job that just finished may have added a model: the library table is server-drawn.
    const nowFinished = jobs.filter((job) => FINISHED.has(job.state)).map((job) => String(job.id));
    const fresh = nowFinished.filter((id) => !finishedSeen.has(id));
    finishedSeen = new Set(nowFinished);
    for (const job of jobs) {
      if (fresh.includes(String(job.id)) && job.result_model) {
        const note = document.createElement("p");
        note.setAttribute("role", "status");
        note.textContent = `${job.result_model} is in the library: reload the page to see it there.`;
        table.before(note);
      }
    }
  }

  setInterval(refresh, 1000);
})();

// Uploads: declared first, then sent in chunks, each starting where the server's copy ends.
// A failed chunk is retried after asking the server where it stands; after a reload, the
// same file (same name and size) goes on from the server's offset.
(function () {
  "use strict";
  const form = document.querySelector("form.model-upload");
  if (!form) return;
  const input = form.querySelector("input[type=file]");
  const nameInput = form.querySelector("input[name=name]");
  const bar = form.querySelector("[data-role=upload-progress]");
  const status = form.querySelector("[data-role=upload-status]");
  const shaOut = form.querySelector("[data-role=upload-sha256]");
  const button = form.querySelector("button[type=submit]");
  const token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const RETRIES = 60;

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const say = (text) => {
    status.textContent = text;
  };
  const mib = (n) => `${(n / 1024 / 1024).toFixed(1)} MiB`;

  input.addEventListener("change", () => {
    const file = input.files[0];
    if (file && !nameInput.value) nameInput.value = file.name.replace(/\.gguf$/i, "");
  });

  // The upload this page started: a finish refused (a name taken) goes on with it.
  let current = null;

  function unfinishedFor(file) {
    if (current && current.name === file.name && current.size === file.size) return current.id;
    for (const item of document.querySelectorAll("li[data-upload]")) {
      if (item.dataset.filename === file.name && Number(item.dataset.size) === file.size) {
        return item.dataset.upload;
      }
    }
    return null;
  }

  async function call(url, options) {
    const reply = await fetch(url, {
      credentials: "same-origin",
      ...options,
      headers: { "X-CSRFToken": token, Accept: "application/json", ...(options.headers || {}) },
    });
    let body = {};
    try {
      body = await reply.json();
    } catch (error) {
      body = { error: `The server answered ${reply.status}.` };
    }
    return { ok: reply.ok, status: reply.status, body };
  }

  async function where(id) {
    const reply = await call(`/manage/library/uploads/${id}/`, { method: "GET" });
    if (!reply.ok) throw new Error(reply.body.error || "The upload is gone.");
    return reply.body;
  }

  async function send(file, id, offset, chunk) {
    let failures = 0;
    while (offset < file.size) {
      const end = Math.min(file.size, offset + chunk);
      let reply;
      try {
        reply = await call(`/manage/library/uploads/${id}/chunk/?offset=${offset}`, {
          method: "POST",
          headers: { "Content-Type": "application/octet-stream" },
          body: file.slice(offset, end),
        });
      } catch (error) {
        reply = null; // the connection dropped
      }
      if (reply && reply.ok) {
        offset = reply.body.received;
        failures = 0;
      } else if (reply && reply.status === 409 && reply.body.offset !== null) {
        offset = reply.body.offset; // the server has more (or less) than we thought
      } else if (reply && reply.status < 500 && reply.status !== 0) {
        throw new Error(reply.body.error || `The server refused the chunk (${reply.status}).`);
      } else {
        failures += 1;
        if (failures > RETRIES) throw new Error("The connection stayed down: choose the file again to go on.");
        const wait = Math.min(5000, 500 * failures);
        say(`Connection lost at ${mib(offset)}: retrying in ${Math.round(wait / 1000)} s…`);
        await sleep(wait);
        try {
          offset = (await where(id)).received;
        } catch (error) {
          continue; // still down: try again
        }
      }
      bar.value = offset / file.size;
      say(`${mib(offset)} of ${mib(file.size)} (${Math.floor((100 * offset) / file.size)}%)`);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) return;
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    shaOut.textContent = "";
    try {
      let id = unfinishedFor(file);
      let upload;
      if (id) {
        upload = await where(id);
        say(`Going on from ${mib(upload.received)}…`);
      } else {
        const reply = await call(form.dataset.start, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ filename: file.name, size: file.size }),
        });
        if (!reply.ok) throw new Error(reply.body.error);
        upload = reply.body;
        id = upload.id;
      }
      current = { id, name: file.name, size: file.size };
      bar.value = upload.received / file.size;
      await send(file, id, upload.received, upload.chunk_bytes);
      say("Checking the file…");
      const data = new FormData(form);
      data.delete("file");
      const done = await call(`/manage/library/uploads/${id}/finish/`, { method: "POST", body: data });
      if (done.body.state && done.body.state !== "receiving") current = null; // done or refused
      if (done.body.sha256) shaOut.textContent = `sha256 ${done.body.sha256}`;
      if (!done.ok) throw new Error(done.body.error || "The file was refused.");
      say(`Registered ${done.body.model}: reload the page to see it in the library.`);
      const item = document.querySelector(`li[data-upload="${id}"]`);
      if (item) item.remove();
    } catch (error) {
      say(error.message);
    } finally {
      button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });
})();
