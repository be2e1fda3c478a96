// One agent: its versions, publish, and "start a run" with a field per template var.
import { api } from "./api.js";
import { clearErrors, fieldError, showApiError } from "./errors.js";
import * as ui from "./ui.js";

const { $, el } = ui;
const agentId = $("main").dataset.agentId;
const start = $("[data-start]");
let latest = null;

// The {{var}} placeholders of the texts, in order of appearance.
function templateVars(...texts) {
  const names = [];
  for (const text of texts) {
    for (const match of (text || "").matchAll(/\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}/g)) {
      if (!names.includes(match[1])) names.push(match[1]);
    }
  }
  return names;
}

function showVars(agent) {
  const names = templateVars(agent.instructions, agent.prompt);
  const fields = names.map((name) => {
    const id = `var-${name}`;
    const fallback = agent.vars?.[name];
    return el(
      "div",
      { class: "field" },
      el("label", { for: id }, `{{${name}}}`),
      el("input", { id, name: `var:${name}`, "data-var": name, value: fallback ?? "", placeholder: fallback === undefined ? "required" : "" }),
      el("p", { class: "field-error", "data-error-for": `var:${name}`, hidden: true }),
    );
  });
  $("[data-vars]").replaceChildren(...fields);
}

function showPublished(agent) {
  const badge = $("[data-published-badge]");
  badge.textContent = agent.published_version ? `published: version ${agent.published_version}` : "not published";
  badge.className = agent.published_version ? "status s-completed" : "status s-queued";
}

function showVersions(select) {
  const chosen = select.value;
  const options = [];
  for (let v = latest.version; v >= 1; v--) {
    const notes = [v === latest.version && "latest", v === latest.published_version && "published"];
    const label = notes.some(Boolean) ? `${v} (${notes.filter(Boolean).join(", ")})` : String(v);
    options.push(el("option", { value: v }, label));
  }
  select.replaceChildren(...options);
  if (chosen) select.value = chosen;
}

async function showVersion(version) {
  const agent = await api("GET", `/agents/${agentId}?version=${version}`);
  $("[data-field=name]").textContent = agent.name;
  document.title = `${agent.name} · agentruns`;
  $("[data-spec]").textContent = JSON.stringify(agent, null, 2);
  $("[data-publish]").textContent =
    latest.published_version === version ? `Version ${version} is published` : `Publish version ${version}`;
  $("[data-publish]").disabled = latest.published_version === version;
}

async function startRun(event) {
  event.preventDefault();
  clearErrors(start);
  const body = { agent_id: agentId, environment: start.environment.value, vars: {} };
  for (const input of start.querySelectorAll("[data-var]")) {
    if (input.value !== "") body.vars[input.dataset.var] = input.value;
  }
  if (start.message.value.trim()) body.message = start.message.value;
  if (start.callback_url.value.trim()) body.callback_url = start.callback_url.value.trim();
  try {
    const run = await api("POST", "/agent-runs", body);
    location.assign(`/runs/${run.id}`);
  } catch (err) {
    const missing = err.details?.missing_vars;
    if (missing) {
      for (const name of missing) fieldError(start, `var:${name}`, `${name} is required`);
      start.querySelector("[aria-invalid]")?.focus();
    } else {
      showApiError(start, err, (field) => (field.startsWith("vars.") ? `var:${field.slice(5)}` : field.split(/[.[]/)[0]));
    }
  }
}

async function main() {
  try {
    latest = await api("GET", `/agents/${agentId}`);
  } catch (err) {
    ui.pageError(err.status === 404 ? "There is no such agent in this key's project." : err.message);
    for (const node of document.querySelectorAll("main > :not([data-page-error])")) node.hidden = true;
    return;
  }
  const select = $("[data-versions]");
  showVersions(select);
  const asked = Number(new URLSearchParams(location.search).get("version"));
  select.value = asked >= 1 && asked <= latest.version ? asked : latest.version;
  select.addEventListener("change", () => {
    history.replaceState(null, "", `?version=${select.value}`);
    showVersion(Number(select.value)).catch((err) => ui.pageError(err.message));
  });
  $("[data-publish]").addEventListener("click", async () => {
    latest = await api("POST", `/agents/${agentId}/publish`, { version: Number(select.value) });
    showPublished(latest);
    showVersions(select);
    await showVersion(Number(select.value));
    const note = $("[data-publish-note]");
    note.textContent = `Version ${select.value} is now what production runs use.`;
    note.hidden = false;
  });
  showPublished(latest);
  showVars(latest);
  start.addEventListener("submit", startRun);
  await showVersion(Number(select.value));
}

if (ui.startPage()) main().catch((err) => ui.pageError(err.message));
