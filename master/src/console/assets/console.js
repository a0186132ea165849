// Muster web console: the only script. It asks before actions, selects
// rows, and applies the server's live events (server-sent events from
// /live) to the page: no polling. Every HTML fragment it inserts was
// rendered (and escaped) by the server.
"use strict";

// Every button with data-confirm asks first. A form with data-inline is
// sent without leaving the page (the live events keep coming): the
// answer's notice replaces this page's.
document.addEventListener("submit", (e) => {
  const form = e.target;
  const button = e.submitter;
  const question = button && button.dataset.confirm;
  if (question && !window.confirm(question)) {
    e.preventDefault();
    return;
  }
  if (form.dataset.inline === undefined) return;
  e.preventDefault();
  const body = new URLSearchParams(new FormData(form, button));
  showNotice(null, "working…");
  // getAttribute: `form.action` would be the buttons named "action".
  fetch(form.getAttribute("action"), { method: "POST", body, credentials: "same-origin" })
    .then((answer) => answer.text().then((text) => ({ answer, text })))
    .then(({ answer, text }) => {
      const page = new DOMParser().parseFromString(text, "text/html");
      const notice = page.getElementById("notice");
      const error = page.getElementById("error");
      if (answer.ok && notice) showNotice(notice);
      else showNotice(null, error ? error.textContent : `${answer.status} ${answer.statusText}`, true);
    })
    .catch((err) => showNotice(null, String(err), true));
});

function showNotice(notice, text, bad) {
  if (!notice) {
    notice = document.createElement("div");
    notice.id = "notice";
    notice.className = bad ? "notice bad" : "notice";
    notice.textContent = text;
  }
  const old = document.getElementById("notice");
  if (old) old.replaceWith(notice);
  else document.querySelector("main h1").after(notice);
}

// A header checkbox with data-select-all selects every row's checkbox.
document.addEventListener("change", (e) => {
  const all = e.target.closest("input[data-select-all]");
  if (!all) return;
  document.querySelectorAll(`input[name="${all.dataset.selectAll}"]`).forEach((box) => {
    box.checked = all.checked;
  });
});

function flash(el) {
  el.classList.remove("flash");
  void el.offsetWidth; // restart the animation
  el.classList.add("flash");
}

function fragment(html) {
  const t = document.createElement("template");
  t.innerHTML = html;
  return t.content.firstElementChild;
}

function onTarget(d) {
  const rows = document.querySelectorAll(`tr[data-target="${CSS.escape(d.target)}"]`);
  if (rows.length === 0 && document.getElementById("targets") && d.cells.status !== "removed") {
    showNotice(null, `Target ${d.target} was enlisted; reload to see it.`);
  }
  rows.forEach((row) => {
    for (const [cell, text] of Object.entries(d.cells)) {
      const td = row.querySelector(`[data-cell="${cell}"]`);
      if (!td || td.textContent === text) continue;
      td.textContent = text;
      if (cell === "status") td.className = `status status-${text}`;
      flash(td);
    }
  });
}

function onRun(d) {
  document.querySelectorAll("tbody[data-runs]").forEach((body) => {
    const want = body.dataset;
    if ((want.job && want.job !== d.job) || (want.target && want.target !== d.target) || (want.outcome && want.outcome !== d.outcome)) {
      return;
    }
    const row = fragment(d.row);
    const old = body.querySelector(`tr[data-run="${CSS.escape(d.target + "/" + d.run_id)}"]`);
    if (old) old.replaceWith(row);
    else body.prepend(row);
    flash(row);
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
  });
  document.querySelectorAll(`tr[data-status-job="${CSS.escape(d.job)}"][data-status-target="${CSS.escape(d.target)}"]`).forEach((row) => {
    row.querySelectorAll("td:not(.select)").forEach((td) => td.remove());
    const t = document.createElement("template");
    t.innerHTML = `<table><tr>${d.status_cells}</tr></table>`;
    row.append(...t.content.querySelector("tr").children);
    flash(row);
  });
}

const source = document.body.dataset.live;
if (source && window.EventSource) {
  const state = document.getElementById("live-state");
  const events = new EventSource(source);
  events.addEventListener("open", () => { if (state) state.textContent = "live"; });
  events.addEventListener("error", () => { if (state) state.textContent = "reconnecting…"; });
  events.addEventListener("target", (e) => onTarget(JSON.parse(e.data)));
  events.addEventListener("run", (e) => onRun(JSON.parse(e.data)));
  // Events were missed (this page fell behind): start again from the server's view.
  events.addEventListener("lagged", () => window.location.reload());
}
