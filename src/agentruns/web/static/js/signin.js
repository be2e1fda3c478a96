// Sign in: check the key against the API, keep it in this tab, go back where we came from.
import { api, ApiError, saveKey } from "./api.js";
import { $, showError } from "./ui.js";

const form = $("[data-signin-form]");
const error = $("#key-error");

function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  // Only a path on this site: never bounce a fresh key to another origin.
  return next.startsWith("/") && !next.startsWith("//") ? next : "/";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = form.key.value.trim();
  if (!key) {
    showError(error, "Paste your API key first.");
    form.key.focus();
    return;
  }
  showError(error, "");
  try {
    await api("GET", "/agents?limit=1", undefined, { key });
  } catch (err) {
    const invalid = err instanceof ApiError && err.status === 401;
    showError(error, invalid ? "That key is not valid (or was revoked)." : err.message);
    form.key.focus();
    return;
  }
  saveKey(key);
  location.assign(nextPage());
});
form.key.focus();
