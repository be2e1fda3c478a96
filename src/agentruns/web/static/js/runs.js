// The runs list: filters in the URL, refreshed every 2 s so new runs and status changes
// appear without reloading (the API has no project-wide event stream to follow).
import { api } from "./api.js";
import * as ui from "./ui.js";

const { $, el } = ui;
const table = $("[data-runs]");
const tbody = $("tbody", table);
const form = $("[data-filters]");
const more = $("[data-more]");
const rows = new Map(); // run id -> <tr>
let older = []; // runs of the pages loaded with "Load older runs"
let cursor = null;
let names = new Map();
let shown = false; // highlight only what changes after the first render

function query(after) {
  const params = new URLSearchParams({ limit: "50" });
  for (const name of ["status", "agent_id"]) {
    if (form[name].value) params.set(name, form[name].value);
  }
  if (after) params.set("after", after);
  return params.toString();
}

function cells(run) {
  const agent = names.get(run.agent_id) || run.agent_id.slice(0, 8);
  return [
    el("td", {}, ui.statusBadge(run.status)),
    el("td", { class: "id" }, el("a", { href: `/runs/${run.id}`, title: run.id }, run.id.slice(0, 8))),
    el("td", {}, el("a", { href: `/agents/${run.agent_id}` }, agent)),
    el("td", {}, ui.timeEl(run.created_at)),
    el("td", {}, ui.duration(run)),
    el("td", { class: "num" }, ui.tokens(run.usage)),
  ];
}

function rowFor(run) {
  let row = rows.get(run.id);
  if (!row) {
    row = el("tr", { "data-run": run.id, class: shown ? "fresh" : null });
    rows.set(run.id, row);
  } else if (row.dataset.status !== run.status) {
    row.classList.remove("fresh");
    void row.offsetWidth; // restart the highlight animation
    row.classList.add("fresh");
  }
  row.dataset.status = run.status;
  // Refresh the cells in place; the link keeps keyboard focus across refreshes.
  const focused = row.contains(document.activeElement);
  if (!focused) row.replaceChildren(...cells(run));
  return row;
}

function render(firstPage) {
  const seen = new Set();
  const runs = [...firstPage, ...older].filter((r) => !seen.has(r.id) && seen.add(r.id));
  runs.sort((a, b) => b.created_at.localeCompare(a.created_at));
  for (const [id, row] of rows) {
    if (!seen.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  // Insert new rows where they belong; existing ones keep their place (and focus).
  let position = tbody.firstElementChild;
  for (const run of runs) {
    const row = rowFor(run);
    if (row !== position) tbody.insertBefore(row, position);
    else position = position.nextElementSibling;
  }
  const filtered = Boolean(form.status.value || form.agent_id.value);
  table.hidden = runs.length === 0;
  $("[data-empty]").hidden = runs.length > 0 || filtered;
  $("[data-empty-filtered]").hidden = runs.length > 0 || !filtered;
  more.hidden = !cursor;
  shown = true;
}

async function refresh() {
  try {
    const page = await api("GET", `/agent-runs?${query()}`, undefined, { whole: true });
    if (older.length === 0) cursor = page.next_cursor;
    render(page.data);
    ui.pageError("");
    $("[data-live]").classList.remove("offline");
  } catch (err) {
    $("[data-live]").classList.add("offline");
    ui.pageError(`Could not refresh the runs: ${err.message}`);
  }
}

async function loadOlder() {
  const page = await api("GET", `/agent-runs?${query(cursor)}`, undefined, { whole: true });
  older = [...older, ...page.data];
  cursor = page.next_cursor;
  await refresh();
}

async function main() {
  const params = new URLSearchParams(location.search);
  names = await ui.agentsById(api);
  for (const [id, name] of names) form.agent_id.append(el("option", { value: id }, name));
  const agentId = params.get("agent_id");
  if (agentId && !names.has(agentId)) form.agent_id.append(el("option", { value: agentId }, agentId));
  form.agent_id.value = agentId || "";
  form.status.value = params.get("status") || "";
  form.addEventListener("change", () => {
    const url = new URLSearchParams(query());
    url.delete("limit");
    history.replaceState(null, "", url.size ? `/?${url}` : "/");
    older = [];
    refresh();
  });
  form.addEventListener("submit", (event) => event.preventDefault());
  more.addEventListener("click", loadOlder);
  await refresh();
  ui.every(2000, refresh);
}

if (ui.startPage()) main().catch((err) => ui.pageError(err.message));
