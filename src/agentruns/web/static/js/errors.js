// Put a 422's messages next to the fields they name; the rest in the form's general slot.
import { $ } from "./ui.js";

// "tools[1].url", "tools.0.name", "vars.name" -> "tools", "vars"
export const topField = (path) => String(path || "").split(/[.[]/)[0];

export function clearErrors(form) {
  for (const node of form.querySelectorAll("[data-error-for]")) {
    node.textContent = "";
    node.hidden = true;
  }
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

export function fieldError(form, field, message) {
  const slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) || $('[data-error-for=""]', form);
  slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
  slot.hidden = false;
  const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
  if (input) input.setAttribute("aria-invalid", "true");
  return input;
}

// Shows every problem of an ApiError; focuses the first field named.
export function showApiError(form, err, fieldFor = topField) {
  const details = Array.isArray(err.details) ? err.details : [];
  const inputs = [];
  for (const d of details) inputs.push(fieldError(form, fieldFor(d.field), `${d.field}: ${d.message}`));
  if (!details.length) {
    // Some 422s carry no details but start with the field's name ("bundle: ...").
    const named = /^([a-z_]+)[:.[]/.exec(err.message || "");
    inputs.push(fieldError(form, named ? named[1] : "", err.message));
  }
  inputs.find(Boolean)?.focus();
}
