// The agents list.
import { api } from "./api.js";
import * as ui from "./ui.js";

const { $, el } = ui;

async function main() {
  const agents = await api("GET", "/agents?limit=100");
  const rows = agents.map((a) =>
    el(
      "tr",
      { "data-agent": a.id },
      el("td", {}, el("a", { href: `/agents/${a.id}` }, a.name)),
      el("td", {}, a.model || "server default"),
      el("td", { class: "num" }, String(a.version)),
      el("td", {}, a.published_version ? `version ${a.published_version}` : "not published"),
      el("td", {}, ui.timeEl(a.updated_at)),
    ),
  );
  $("[data-agents] tbody").replaceChildren(...rows);
  $("[data-agents]").hidden = rows.length === 0;
  $("[data-empty]").hidden = rows.length > 0;
}

if (ui.startPage()) main().catch((err) => ui.pageError(err.message));
