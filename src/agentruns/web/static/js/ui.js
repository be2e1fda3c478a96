// Small DOM helpers shared by the pages. Text always goes in as text, never as HTML.
import { apiKey, requireKey, signOut } from "./api.js";

export const $ = (selector, root = document) => root.querySelector(selector);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

export function statusBadge(status) {
  return el("span", { class: `status s-${status}` }, status.replaceAll("_", " "));
}

export function setStatus(node, status) {
  node.className = `status s-${status}`;
  node.textContent = status.replaceAll("_", " ");
}

const UNITS = [
  ["d", 86400],
  ["h", 3600],
  ["min", 60],
  ["s", 1],
];

export function span(seconds) {
  if (seconds < 1) return `${Math.max(0, Math.round(seconds * 1000))} ms`;
  for (const [unit, size] of UNITS) {
    if (seconds >= size) {
      const value = seconds / size;
      return `${value < 10 && unit !== "s" ? value.toFixed(1) : Math.round(value)} ${unit}`;
    }
  }
  return "0 s";
}

export function ago(iso) {
  if (!iso) return "";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  return seconds < 5 ? "just now" : `${span(seconds)} ago`;
}

// A relative time that shows the exact one on hover and to screen readers.
export function timeEl(iso) {
  return el("time", { datetime: iso, title: new Date(iso).toLocaleString() }, ago(iso));
}

export function duration(run) {
  if (!run.started_at) return run.status === "queued" ? "waiting" : "";
  const end = run.completed_at ? Date.parse(run.completed_at) : Date.now();
  return span((end - Date.parse(run.started_at)) / 1000);
}

export function tokens(usage) {
  const u = usage || {};
  return `${u.input_tokens ?? 0} / ${u.output_tokens ?? 0}`;
}

export function pretty(value) {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return value;
    }
  }
  return JSON.stringify(value, null, 2);
}

export function showError(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}

export function pageError(message) {
  showError($("[data-page-error]"), message);
}

// Re-run `fn` every `ms` while the tab is visible; it never overlaps with itself.
export function every(ms, fn) {
  let busy = false;
  const tick = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      await fn();
    } finally {
      busy = false;
    }
  };
  document.addEventListener("visibilitychange", tick);
  return setInterval(tick, ms);
}

// Every page but sign-in: a key, the key hint and the sign-out button.
export function startPage() {
  if (!requireKey()) return false;
  const who = $("[data-who]");
  if (who) {
    $("[data-key-hint]").textContent = `key ${apiKey().slice(0, 7)}…`;
    $("[data-signout]").addEventListener("click", signOut);
    who.hidden = false;
  }
  return true;
}

// Agent names for ids, fetched once per page (the list is capped at 100: enough for a
// dashboard; beyond that the id is shown).
let agentNames;
export async function agentsById(api) {
  if (!agentNames) {
    const agents = await api("GET", "/agents?limit=100");
    agentNames = new Map(agents.map((a) => [a.id, a.name]));
  }
  return agentNames;
}
