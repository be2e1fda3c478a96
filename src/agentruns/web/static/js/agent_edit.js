// Create or edit an agent: one input per field, JSON for the structured ones. Edits send
// only the fields that changed (PATCH merges them into a new version).
import { api } from "./api.js";
import { clearErrors, fieldError, showApiError } from "./errors.js";
import * as ui from "./ui.js";

const { $ } = ui;
const agentId = $("main").dataset.agentId;
const form = $("[data-editor]");
const inputs = [...form.querySelectorAll("[data-kind]")];
// What an emptied field means.
const EMPTY = { instructions: "", tools: [], vars: {}, model_settings: {}, metadata: {} };
let original = {};

function display(input, value) {
  if (value === null || value === undefined) return "";
  return input.dataset.kind === "json" ? JSON.stringify(value, null, 2) : String(value);
}

// The field's value, or throws with a message for the field.
function read(input) {
  const text = input.value.trim();
  if (text === "") return input.name in EMPTY ? EMPTY[input.name] : null;
  if (input.dataset.kind === "json") {
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new Error(`not valid JSON: ${err.message}`);
    }
  }
  if (input.dataset.kind === "number") {
    const number = Number(text);
    if (!Number.isFinite(number)) throw new Error("must be a number");
    return number;
  }
  return input.dataset.kind === "prose" ? input.value : text;
}

function body() {
  const fields = {};
  let bad = null;
  for (const input of inputs) {
    try {
      const value = read(input);
      const changed = JSON.stringify(value) !== JSON.stringify(original[input.name] ?? EMPTY[input.name] ?? null);
      // A new agent sends what is filled in; an edit sends what changed.
      if (agentId ? changed : value !== null) fields[input.name] = value;
    } catch (err) {
      bad ??= fieldError(form, input.name, err.message);
    }
  }
  bad?.focus();
  return bad ? null : fields;
}

async function save(event) {
  event.preventDefault();
  clearErrors(form);
  const fields = body();
  if (!fields) return;
  if (agentId && Object.keys(fields).length === 0) {
    fieldError(form, "", "Nothing changed.");
    return;
  }
  try {
    const agent = agentId
      ? await api("PATCH", `/agents/${agentId}`, fields)
      : await api("POST", "/agents", fields);
    location.assign(`/agents/${agent.id}`);
  } catch (err) {
    showApiError(form, err);
  }
}

async function main() {
  if (agentId) {
    try {
      original = await api("GET", `/agents/${agentId}`);
    } catch (err) {
      ui.pageError(err.status === 404 ? "There is no such agent in this key's project." : err.message);
      form.hidden = true;
      return;
    }
  } else {
    original = { tools: [], vars: {} };
  }
  for (const input of inputs) input.value = display(input, original[input.name]);
  form.addEventListener("submit", save);
  $("[data-editor-fields]").disabled = false;
  $("#f-name").focus();
}

if (ui.startPage()) main().catch((err) => ui.pageError(err.message));
