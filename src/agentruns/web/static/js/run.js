// One run: its facts, the transcript streamed live over SSE, forms for pending client-side
// tool calls, cancel / continue, and the webhook deliveries.
import { api, events } from "./api.js";
import * as ui from "./ui.js";

const { $, el } = ui;
const runId = $("main").dataset.runId;
const transcript = $("[data-transcript]");
const tools = new Map(); // tool call id -> its transcript entry
const pendingForms = new Map(); // tool call id -> its answer form
let run = null;
let lastSeq = 0;
let streaming = false;
let streamed = null; // the assistant message being streamed
let sentMessage = null; // what this tab sent with "Continue"
let eventStatus = null; // the status as the events replayed so far say
let deliveries = [];
let deliveriesFor = null; // the run status when the deliveries were last read
let names = new Map();

// --- the transcript -----------------------------------------------------------------

function entry(kind, ...children) {
  const item = el("li", { class: `entry ${kind}` }, ...children);
  transcript.append(item);
  $("[data-transcript-empty]").hidden = true;
  return item;
}

function assistantEntry() {
  const text = el("div", { class: "text" });
  const item = entry("assistant streaming", el("div", { class: "who" }, "assistant"), text);
  item.text = text;
  return item;
}

function toolEntry(call, side) {
  let item = tools.get(call.id);
  if (item) return item;
  const state = el("span", { class: "tool-state" }, side === "client" ? "waiting for your output" : "running");
  item = entry(
    `tool ${side}`,
    el("div", { class: "who" }, `${side === "client" ? "client" : "server"} tool `, el("code", {}, call.name), " ", state),
    el("details", { open: true }, el("summary", {}, "arguments"), el("pre", {}, ui.pretty(call.arguments))),
  );
  item.state = state;
  tools.set(call.id, item);
  return item;
}

function toolDone(data) {
  const item = toolEntry(data, tools.has(data.id) ? "" : "client");
  const took = data.duration_ms === undefined ? "" : ` in ${ui.span(data.duration_ms / 1000)}`;
  item.state.textContent = (data.is_error ? "error" : "done") + took;
  item.classList.toggle("error", Boolean(data.is_error));
  item.append(el("details", { open: true }, el("summary", {}, "output"), el("pre", {}, ui.pretty(data.output ?? ""))));
}

function handle(event) {
  const data = event.data;
  switch (event.event) {
    case "message.delta":
      streamed ??= assistantEntry();
      streamed.text.textContent += data.delta;
      break;
    case "message.completed":
      if (data.content) {
        streamed ??= assistantEntry();
        streamed.text.textContent = data.content;
      } else streamed?.remove();
      streamed?.classList.remove("streaming");
      streamed = null;
      break;
    case "message.discarded": // its worker died; the message will be streamed again
      streamed?.remove();
      streamed = null;
      break;
    case "tool_call.started":
      toolEntry(data, "server");
      break;
    case "tool_call.completed":
      toolDone(data);
      break;
    case "tool_calls.required":
      for (const call of data.tool_calls) toolEntry(call, "client");
      break;
    case "run.failed":
      entry("error", el("div", { class: "who" }, "run failed"), data.error?.message || "");
      eventStatus = data.status;
      showRun(data);
      break;
    default:
      if (event.event.startsWith("run.")) {
        if (data.status === "queued" && eventStatus === "completed") {
          entry("divider", sentMessage ? `you: ${sentMessage}` : "continued with a new message");
          sentMessage = null;
        }
        eventStatus = data.status;
        showRun(data);
      }
  }
}

// The stream replays every stored event, then follows live ones; it closes after a
// terminal event. A continue (from here or elsewhere) starts it again after lastSeq.
async function follow() {
  if (streaming) return;
  streaming = true;
  try {
    for await (const event of events(`/agent-runs/${runId}/events`, { after: lastSeq })) {
      lastSeq = event.id;
      handle(event);
    }
  } catch (err) {
    ui.pageError(`Live updates stopped: ${err.message}. Retrying…`);
  } finally {
    streaming = false;
  }
}

// --- the run's facts, actions and pending tool calls ---------------------------------

function showFacts() {
  const set = (name, ...value) => $(`[data-field="${name}"]`).replaceChildren(...value);
  const agent = names.get(run.agent_id) || run.agent_id;
  set("agent", el("a", { href: `/agents/${run.agent_id}` }, agent), ` · v${run.agent_version}`);
  set("created", ui.timeEl(run.created_at));
  set("duration", ui.duration(run));
  set("tokens", ui.tokens(run.usage));
  set("environment", run.environment);
}

function showRun(fresh) {
  run = fresh;
  ui.setStatus($("[data-status]"), run.status);
  showFacts();
  const terminal = ui.TERMINAL.has(run.status);
  $("[data-cancel]").hidden = terminal;
  $("[data-continue]").hidden = run.status !== "completed";
  ui.showError($("[data-run-error]"), run.error ? `${run.error.type}: ${run.error.message}` : "");
  showPending(run.pending_tool_calls || []);
}

function answerForm(call) {
  const id = `answer-${call.id}`;
  const error = el("p", { class: "field-error", role: "alert", hidden: true });
  const output = el("textarea", { id, name: "output", rows: 3, required: true, "aria-describedby": `${id}-args` });
  const form = el(
    "form",
    { class: "card pending", "data-call": call.id },
    el("div", { class: "who" }, "tool ", el("code", {}, call.name), " ", el("span", { class: "id" }, call.id)),
    el("pre", { id: `${id}-args` }, ui.pretty(call.arguments)),
    el("label", { for: id }, `Output of ${call.name}`),
    output,
    error,
    el("button", { type: "submit" }, "Send output"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { tool_responses: [{ tool_call_id: call.id, output: output.value }] };
    try {
      showRun(await api("POST", `/agent-runs/${runId}/tool-responses`, body));
      follow();
    } catch (err) {
      ui.showError(error, err.message);
    }
  });
  return form;
}

function showPending(calls) {
  const ids = new Set(calls.map((c) => c.id));
  for (const [id, form] of pendingForms) {
    if (!ids.has(id)) {
      form.remove();
      pendingForms.delete(id);
    }
  }
  // Existing forms stay as they are: what the user is typing is kept.
  for (const call of calls) {
    if (!pendingForms.has(call.id)) {
      const form = answerForm(call);
      pendingForms.set(call.id, form);
      $("[data-pending]").append(form);
    }
  }
  $("[data-pending-section]").hidden = calls.length === 0;
}

// --- webhook deliveries ---------------------------------------------------------------

function attemptText(a) {
  const outcome = a.status_code ? `HTTP ${a.status_code}` : a.error || "in flight";
  const took = a.duration_ms === null ? "" : ` in ${ui.span(a.duration_ms / 1000)}`;
  return `#${a.attempt}: ${outcome}${took}, ${ui.ago(a.started_at)}`;
}

function showDeliveries() {
  const rows = deliveries.map((d) => {
    const attempts = d.attempts.map((a) => el("li", {}, attemptText(a)));
    if (d.next_attempt_at) attempts.push(el("li", { class: "hint" }, `next attempt ${ui.ago(d.next_attempt_at).replace(" ago", "")}`));
    return el(
      "tr",
      { "data-delivery": d.id },
      el("td", {}, el("code", {}, d.type)),
      el("td", {}, ui.statusBadge(d.status)),
      el("td", { class: "url" }, d.url),
      el("td", {}, attempts.length ? el("ol", { class: "attempts" }, attempts) : "not sent yet"),
    );
  });
  $("tbody", $("[data-deliveries]")).replaceChildren(...rows);
  $("[data-deliveries]").hidden = rows.length === 0;
  $("[data-deliveries-empty]").hidden = rows.length > 0;
}

async function loadDeliveries() {
  deliveriesFor = run.status;
  deliveries = await api("GET", `/agent-runs/${runId}/webhook-deliveries`);
  showDeliveries();
}

const settled = (d) => d.status === "delivered" || d.status === "failed";

// Every 2 s: the deliveries when the status changed (a webhook is written in the same
// transaction as its status change) or while one may still change; the run itself when no
// stream is open (a continue from another client, or a dropped connection).
async function poll() {
  if (deliveriesFor !== run.status || !deliveries.every(settled)) await loadDeliveries();
  if (!streaming) {
    const fresh = await api("GET", `/agent-runs/${runId}`);
    if (!ui.TERMINAL.has(fresh.status)) follow();
    else if (fresh.updated_at !== run.updated_at) showRun(fresh);
  }
  ui.pageError("");
}

// --- actions -------------------------------------------------------------------------

function wireActions() {
  $("[data-cancel]").addEventListener("click", async () => {
    try {
      showRun(await api("POST", `/agent-runs/${runId}/cancel`));
    } catch (err) {
      ui.showError($("[data-run-error]"), err.message);
    }
  });
  const form = $("[data-continue]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = form.message.value.trim();
    const error = $(".field-error", form);
    if (!message) return ui.showError(error, "Write a message first.");
    try {
      sentMessage = message;
      await api("PUT", `/agent-runs/${runId}`, { message });
      form.reset();
      ui.showError(error, "");
      follow();
    } catch (err) {
      sentMessage = null;
      ui.showError(error, err.message);
    }
  });
}

async function main() {
  try {
    run = await api("GET", `/agent-runs/${runId}`);
  } catch (err) {
    ui.pageError(err.status === 404 ? "There is no such run in this key's project." : err.message);
    for (const section of document.querySelectorAll("main > :not([data-page-error])")) section.hidden = true;
    return;
  }
  names = await ui.agentsById(api);
  showRun(run);
  wireActions();
  await loadDeliveries();
  follow();
  ui.every(2000, () => poll().catch((err) => ui.pageError(err.message)));
  ui.every(1000, () => ui.TERMINAL.has(run.status) || showFacts());
}

if (ui.startPage()) main().catch((err) => ui.pageError(err.message));
