// The JSON API from the browser: the key lives in sessionStorage (this tab only) and goes
// out as a Bearer header, so no cookie ever authenticates anything (no CSRF surface).
const KEY = "agentruns.key";

export const apiKey = () => sessionStorage.getItem(KEY);

export function saveKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  location.assign("/signin");
}

// Pages call this first: without a key, go sign in and come back here afterwards.
export function requireKey() {
  if (apiKey()) return true;
  const next = location.pathname + location.search;
  location.replace("/signin?next=" + encodeURIComponent(next));
  return false;
}

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.type = error?.type;
    this.details = error?.details;
  }
}

function headers(key, extra = {}) {
  return { Authorization: `Bearer ${key ?? apiKey()}`, ...extra };
}

// One API call; answers the envelope's `data` (or the whole body with `{whole: true}`).
export async function api(method, path, body, { key, whole = false } = {}) {
  const init = { method, headers: headers(key) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch("/v1" + path, init);
  const payload = await response.json().catch(() => ({}));
  if (response.status === 401 && key === undefined) {
    // The key was revoked while the tab was open.
    signOut();
  }
  if (!response.ok) throw new ApiError(response.status, payload.error);
  return whole ? payload : payload.data;
}

// Server-Sent Events with an Authorization header, which EventSource cannot send: fetch()
// and read the body as it arrives. Yields {id, event, data} until the server closes.
export async function* events(path, { after = 0, signal } = {}) {
  const url = `/v1${path}?after=${after}`;
  const response = await fetch(url, { headers: headers(), signal });
  if (!response.ok) {
    const payload = await response.json().catch(() => ({}));
    throw new ApiError(response.status, payload.error);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = parseFrame(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (frame) yield frame;
    }
  }
}

function parseFrame(text) {
  const frame = { id: null, event: "message", data: "" };
  for (const line of text.split("\n")) {
    if (line.startsWith(":")) continue; // heartbeat comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") frame.id = Number(value);
    else if (field === "event") frame.event = value;
    else if (field === "data") frame.data += (frame.data ? "\n" : "") + value;
  }
  if (frame.id === null) return null;
  frame.data = frame.data ? JSON.parse(frame.data) : {};
  return frame;
}
