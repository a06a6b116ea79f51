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
